"""Per-model request counts for the preloader's "recent traffic" ordering.

Counting is a dict increment on the hot path; a background task flushes the counts to Redis in one
pipeline every few seconds, into per-minute hashes that expire, so "recent" costs nothing to keep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from redis.exceptions import RedisError

from router.loops import reraise_if_cancelling
from router.redis_conn import RedisClient
from router.warm_map import traffic_key

log = logging.getLogger(__name__)

KEEP_MINUTES = 60


class TrafficCounter:
    def __init__(
        self,
        redis: RedisClient,
        *,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.interval_s = interval_s
        self._clock = clock
        self._counts: Counter[tuple[str, str]] = Counter()

    def count(self, endpoint: str, model: str) -> None:
        self._counts[(endpoint, model)] += 1

    async def flush(self) -> None:
        counts, self._counts = self._counts, Counter()
        if not counts:
            return
        minute = int(self._clock() // 60)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (endpoint, model), n in counts.items():
                    key = traffic_key(endpoint, minute)
                    pipe.hincrby(key, model, n)
                    pipe.expire(key, KEEP_MINUTES * 60)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            reraise_if_cancelling(exc)
            log.debug("traffic flush failed, counts dropped: %r", exc)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())


async def recent_traffic(
    redis: RedisClient, endpoint: str, *, minutes: int = KEEP_MINUTES, now: float | None = None
) -> Counter[str]:
    """model -> requests over the last ``minutes`` (what the preloader orders by)."""
    current = int((time.time() if now is None else now) // 60)
    async with redis.pipeline(transaction=False) as pipe:
        for minute in range(current - minutes + 1, current + 1):
            pipe.hgetall(traffic_key(endpoint, minute))
        results = await pipe.execute()
    total: Counter[str] = Counter()
    for raw in results:
        for model, n in raw.items():
            total[model.decode()] += int(n)
    return total
