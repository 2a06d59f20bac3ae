"""Which models are warm on which v2 instance, as the preloader publishes it in Redis.

Contract (written by ``preloader``, read here; key names in ``router.redis_keys``):

- ``wr:warmmap:{endpoint}`` — a hash: field = instance base URL, value = JSON
  ``{"models": [...], "placed": [...], "ts": <unix seconds>}``: the models READY there and, of all
  models on the instance, those the placement puts there (the router may unload the others to make
  room for an on-demand load); entries older than ``STALE_AFTER_S`` are ignored (a dead preloader
  must not pin traffic to a stale picture).
- ``wr:warm:{endpoint}`` — ``"1"`` while the endpoint's whole warm set is warm on every instance
  (with a TTL the preloader refreshes); the router's ``/readyz --wait-for-warm`` reads it.
- ``wr:traffic:{endpoint}:{minute}`` — a hash model -> requests in that minute (router writes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from router.loops import reraise_if_cancelling
from router.redis_keys import traffic_key, warm_flag_key, warm_map_key

__all__ = ["WarmMap", "decode_map", "encode_entry", "traffic_key", "warm_flag_key", "warm_map_key"]
from router.redis_conn import RedisClient

log = logging.getLogger(__name__)

STALE_AFTER_S = 30.0


def encode_entry(models: Iterable[str], now: float, placed: Iterable[str] = ()) -> bytes:
    return orjson.dumps({"models": sorted(models), "placed": sorted(placed), "ts": now})


@dataclass(frozen=True, slots=True)
class Holding:
    """One instance as published: what is READY there, and what the placement puts there."""

    models: frozenset[str]
    placed: frozenset[str]


def decode_instances(raw: Mapping[bytes, bytes], now: float) -> dict[str, Holding]:
    """instance -> its holding, from one HGETALL; stale or garbled entries skipped."""
    found: dict[str, Holding] = {}
    for field, value in raw.items():
        try:
            entry = orjson.loads(value)
            if now - float(entry["ts"]) > STALE_AFTER_S:
                continue
            models = frozenset(str(m) for m in entry["models"])
            placed = frozenset(str(m) for m in entry.get("placed", ()))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue
        found[field.decode()] = Holding(models, placed)
    return found


def decode_map(raw: Mapping[bytes, bytes], now: float) -> dict[str, frozenset[str]]:
    """model -> instances where it is warm, from one HGETALL; stale or garbled entries skipped."""
    by_model: dict[str, set[str]] = {}
    for field, value in raw.items():
        try:
            entry = orjson.loads(value)
            if now - float(entry["ts"]) > STALE_AFTER_S:
                continue
            models = entry["models"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        instance = field.decode()
        for model in models:
            by_model.setdefault(str(model), set()).add(instance)
    return {model: frozenset(urls) for model, urls in by_model.items()}


class WarmMap:
    """A local copy of the published warm state, refreshed in the background (never per request)."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.interval_s = interval_s
        self._clock = clock
        self._endpoints: tuple[str, ...] = ()
        self.warm: dict[str, dict[str, frozenset[str]]] = {}  # endpoint -> model -> instances
        self.holdings: dict[str, dict[str, Holding]] = {}  # endpoint -> instance -> holding

    def track(self, endpoints: Iterable[str]) -> None:
        self._endpoints = tuple(endpoints)

    def instances_for(self, endpoint: str, model: str) -> frozenset[str]:
        return self.warm.get(endpoint, {}).get(model, frozenset())

    def holding(self, endpoint: str, instance: str) -> Holding | None:
        return self.holdings.get(endpoint, {}).get(instance)

    async def refresh(self) -> None:
        endpoints = self._endpoints
        if not endpoints:
            self.warm, self.holdings = {}, {}
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for endpoint in endpoints:
                pipe.hgetall(warm_map_key(endpoint))
            results = await pipe.execute()
        now = self._clock()
        self.warm = {e: decode_map(raw, now) for e, raw in zip(endpoints, results, strict=True)}
        self.holdings = {
            e: decode_instances(raw, now) for e, raw in zip(endpoints, results, strict=True)
        }

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                reraise_if_cancelling(exc)
                # Keep the last picture: still better than nothing while Redis is away.
                log.debug("warm map refresh failed: %r", exc)
            await asyncio.sleep(self.interval_s)
