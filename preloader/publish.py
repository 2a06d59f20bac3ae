"""Writes the warm state the router reads (the contract lives in ``router.warm_map``).

- ``wr:warmmap:{endpoint}``: field = instance base URL, value = ``encode_entry(models, ts)`` with
  only the models verified READY there. Fields of instances that are gone are deleted.
- ``wr:warm:{endpoint}``: ``"1"`` with a TTL while the whole warm set is warm on every instance;
  deleted as soon as it is not. ``keep_flag`` re-sets it every third of its TTL from a task of its
  own, so a long pass (a keep-warm round, a re-warm) cannot let it lapse while nothing changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping

from redis.exceptions import RedisError

from router.loops import reraise_if_cancelling
from router.redis_conn import RedisClient
from router.warm_map import encode_entry, warm_flag_key, warm_map_key

log = logging.getLogger(__name__)

# The hash outlives a silent preloader by this much, then Redis drops it (entries are ignored by
# the router after 30 s anyway; this only keeps dead endpoints from piling up).
MAP_EXPIRE_S = 600


class WarmPublisher:
    def __init__(
        self,
        redis: RedisClient,
        endpoint: str,
        *,
        flag_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.endpoint = endpoint
        self.flag_ttl_ms = max(1, int(flag_ttl_s * 1000))
        self._clock = clock
        self._lock = asyncio.Lock()
        self._warm = False  # the flag as last published: set (and kept set) or not
        self._failing = False  # the last publish failed (Redis down): logged once per outage

    async def publish(
        self,
        instances: Mapping[str, frozenset[str]] | None,
        *,
        all_warm: bool | None,
        keep: Collection[str] = (),
        placed: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """Write the endpoint's warm state.

        ``instances``: URL -> models verified READY there; every other field is deleted except those
        in ``keep`` (instances not checked yet: their last entry stands until it is replaced or goes
        stale). None: no map at all (sagemaker). ``all_warm``: set the flag, delete it, or (None)
        leave it as it is (not known yet: a new leader must not flip the router's readiness).
        ``placed``: URL -> models the placement puts there (the router may unload the others).
        """
        map_key = warm_map_key(self.endpoint)
        flag_key = warm_flag_key(self.endpoint)
        async with self._lock:
            now = self._clock()
            gone: list[bytes | str] = []
            if instances is not None:
                known = await self.redis.hkeys(map_key)
                gone = [f for f in known if _text(f) not in instances and _text(f) not in keep]
            async with self.redis.pipeline(transaction=True) as pipe:
                if gone:
                    pipe.hdel(map_key, *gone)
                if instances:
                    pipe.hset(
                        map_key,
                        mapping={
                            url: encode_entry(m, now, (placed or {}).get(url, ()))
                            for url, m in instances.items()
                        },
                    )
                    pipe.expire(map_key, MAP_EXPIRE_S)
                if all_warm:
                    pipe.set(flag_key, b"1", px=self.flag_ttl_ms)
                elif all_warm is not None:
                    pipe.delete(flag_key)
                await pipe.execute()
            if all_warm is not None:
                self._warm = all_warm
            if self._failing:
                log.info("endpoint=%s warm state written to Redis again", self.endpoint)
                self._failing = False

    def failed(self, exc: BaseException) -> None:
        """A publish failed: one WARNING per outage, not one per check."""
        if not self._failing:
            log.warning(
                "endpoint=%s cannot write the warm state to Redis (logged once until it works "
                "again): %r",
                self.endpoint,
                exc,
            )
            self._failing = True

    async def keep_flag(self) -> None:
        """Re-set the flag every third of its TTL while the last publish set it; until cancelled.

        Under the publish lock, so a refresh never revives a flag a publish just deleted.
        """
        period_s = self.flag_ttl_ms / 3000
        failing = False
        self._warm = False  # a new run vouches for nothing until it publishes
        while True:
            await asyncio.sleep(period_s)
            try:
                async with self._lock:
                    if self._warm:
                        await asyncio.wait_for(
                            self.redis.set(warm_flag_key(self.endpoint), b"1", px=self.flag_ttl_ms),
                            period_s,
                        )
                failing = False
            except (RedisError, OSError, TimeoutError) as exc:
                reraise_if_cancelling(exc)
                if not failing:
                    log.warning("endpoint=%s cannot refresh the warm flag: %r", self.endpoint, exc)
                failing = True

    async def clear_flag(self) -> None:
        await self.redis.delete(warm_flag_key(self.endpoint))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
