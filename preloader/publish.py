"""Writes the warm state the router reads (the contract lives in ``router.warm_map``).

- ``wr:warmmap:{endpoint}``: field = instance base URL, value = ``encode_entry(models, ts)`` with
  only the models verified READY there. Fields of instances that are gone are deleted.
- ``wr:warm:{endpoint}``: ``"1"`` with a TTL while the whole warm set is warm on every instance;
  deleted as soon as it is not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping

from router.redis_conn import RedisClient
from router.warm_map import encode_entry, warm_flag_key, warm_map_key

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

    async def publish(
        self,
        instances: Mapping[str, frozenset[str]] | None,
        *,
        all_warm: bool | None,
        keep: Collection[str] = (),
    ) -> None:
        """Write the endpoint's warm state.

        ``instances``: URL -> models verified READY there; every other field is deleted except those
        in ``keep`` (instances not checked yet: their last entry stands until it is replaced or goes
        stale). None: no map at all (sagemaker). ``all_warm``: set the flag, delete it, or (None)
        leave it as it is (not known yet: a new leader must not flip the router's readiness).
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
                        mapping={url: encode_entry(m, now) for url, m in instances.items()},
                    )
                    pipe.expire(map_key, MAP_EXPIRE_S)
                if all_warm:
                    pipe.set(flag_key, b"1", px=self.flag_ttl_ms)
                elif all_warm is not None:
                    pipe.delete(flag_key)
                await pipe.execute()

    async def clear_flag(self) -> None:
        await self.redis.delete(warm_flag_key(self.endpoint))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
