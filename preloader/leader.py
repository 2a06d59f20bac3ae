"""Cluster mode: one active preloader per endpoint, chosen by a Redis lock with an expiry.

The lock is ``wr:preloader:lock:{endpoint}`` = a token naming its holder, taken with
``SET NX PX``, renewed every third of its TTL by a compare-and-``PEXPIRE`` script, and released by a
compare-and-``DEL`` script on shutdown. A holder that dies stops renewing; the key expires and a
standby takes over. A holder that cannot reach Redis stops working before its lock can have expired
(two thirds of the TTL after its last successful renewal), so two leaders never overlap on a working
clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from router.loops import cancel_and_wait, reraise_if_cancelling
from router.redis_conn import RedisClient
from router.redis_keys import preloader_lock_key

log = logging.getLogger(__name__)

RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def lock_key(endpoint: str) -> str:
    return preloader_lock_key(endpoint)


class RedisLock:
    """A lock with an expiry: only the holder of ``token`` can renew or release it."""

    def __init__(self, redis: RedisClient, key: str, token: str, *, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.token = token
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> bool:
        return bool(await self._release(keys=[self.key], args=[self.token]))

    async def holder(self) -> str | None:
        value = await self.redis.get(self.key)
        if isinstance(value, bytes):
            return value.decode()
        return value


class Leadership:
    """Runs ``work()`` only while this process holds ``lock``; stands by otherwise.

    ``work`` runs until it is cancelled (lost lock, shutdown). If it ends by itself (a bug), the
    lock is released and taken again later, so a standby gets its chance.
    """

    def __init__(
        self,
        lock: RedisLock,
        work: Callable[[], Coroutine[Any, Any, None]],
        *,
        ttl_s: float,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = lock
        self.work = work
        self.ttl_s = ttl_s
        self.period_s = ttl_s / 3
        self.on_change = on_change
        self._clock = clock
        self.leading = False
        self.attempted = False  # at least one election round done (readiness)
        self.error: str | None = None  # the last lock call failed: why

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            if self.on_change is not None:
                self.on_change(leading)

    async def _try(self, call: Callable[[], Awaitable[bool]]) -> bool | None:
        try:
            result = await call()
        except (RedisError, OSError) as exc:
            reraise_if_cancelling(exc)
            if self.error is None:
                log.warning("leader lock %s: redis error: %r", self.lock.key, exc)
            self.error = f"cannot reach Redis for the leader lock: {exc}"
            return None
        self.error = None
        return result

    async def run(self) -> None:
        try:
            while True:
                acquired = await self._try(self.lock.acquire)
                self.attempted = True
                if acquired:
                    await self._lead()
                await asyncio.sleep(self.period_s)
        finally:
            self._set(False)

    async def _lead(self) -> None:
        log.info("leading key=%s token=%s", self.lock.key, self.lock.token)
        self._set(True)
        task = asyncio.create_task(self.work(), name=f"work {self.lock.key}")
        last_ok = self._clock()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.period_s)
                if done:
                    if not task.cancelled() and task.exception() is not None:
                        log.error("work under %s failed", self.lock.key, exc_info=task.exception())
                    return
                renewed = await self._try(self.lock.renew)
                if renewed:
                    last_ok = self._clock()
                elif renewed is False:
                    log.warning("lost the lock %s to another process", self.lock.key)
                    return
                elif self._clock() - last_ok >= self.ttl_s * 2 / 3:
                    log.warning("cannot renew %s: standing down before it expires", self.lock.key)
                    return
        finally:
            self._set(False)
            await cancel_and_wait([task])
            # Compare-and-delete: a no-op when the lock is no longer ours. Shielded so a shutdown
            # cancelling us still hands the endpoint over at once instead of after the TTL.
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self.lock.release())
