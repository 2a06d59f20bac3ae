"""Cluster mode: one active preloader per endpoint, chosen by a Redis lock with an expiry.

The lock is ``wr:preloader:lock:{endpoint}`` = a token naming its holder, taken with
``SET NX PX`` (or re-taken by the token holding it), renewed every third of its TTL by a
compare-and-``PEXPIRE`` script, and released by a compare-and-``DEL`` script on shutdown. A holder that dies stops renewing; the key expires and a
standby takes over.

A lease is timed from the moment its acquire or renew was *sent* (Redis started the expiry no
earlier), and every lock call is bounded well under the lease, so a holder whose renewals go
unanswered stops claiming the lock before it can have expired (two thirds of the TTL after the last
answered renewal was sent): two lock holders never overlap on a working clock.

Redis unreachable is not "someone else leads": nobody can take the lock then, and waiting for it
would leave every endpoint unwarmed (no re-warm after a restart, no keep-warm, so eviction follows).
The process then works *solo* (loads are idempotent, so several solo preloaders only repeat each
other's checks) until Redis answers again: it takes the lock, or stops if another process holds it.
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

# SET NX, or re-take a lock this token still holds (back from a Redis outage it worked solo through).
ACQUIRE = """
local current = redis.call('get', KEYS[1])
if current == false then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

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
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)

    async def acquire(self) -> bool:
        return bool(await self._acquire(keys=[self.key], args=[self.token, self.ttl_ms]))

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
    """Runs ``work()`` while this process holds ``lock``, or alone while Redis cannot be reached;
    stands by while another process holds the lock.

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
        call_timeout_s: float | None = None,
    ) -> None:
        self.lock = lock
        self.work = work
        self.ttl_s = ttl_s
        self.period_s = ttl_s / 3
        # Every lock call is bounded well under the lease (a hung renew must not outlive it).
        self.call_timeout_s = call_timeout_s if call_timeout_s is not None else ttl_s / 6
        self.on_change = on_change
        self._clock = clock
        self.leading = False  # this process holds the lock
        self.solo = False  # Redis unreachable: working without the lock
        self.attempted = False  # at least one election round done (readiness)
        self.error: str | None = None  # the last lock call failed: why
        self._task: asyncio.Task[None] | None = None

    @property
    def working(self) -> bool:
        return self._task is not None and not self._task.done()

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            if self.on_change is not None:
                self.on_change(leading)

    async def _try(self, call: Callable[[], Awaitable[bool]], timeout_s: float) -> bool | None:
        """The call's answer, or None when Redis did not answer in time."""
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            reraise_if_cancelling(exc)
            if self.error is None:
                log.warning("leader lock %s: redis error: %r", self.lock.key, exc)
            self.error = f"cannot reach Redis for the leader lock: {exc!r}"
            return None
        self.error = None
        return result

    def _start_work(self) -> None:
        if not self.working:
            self._task = asyncio.create_task(self.work(), name=f"work {self.lock.key}")

    async def _stop_work(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_and_wait([task])

    def _go_solo(self) -> None:
        if not self.solo:
            log.warning(
                "leader lock %s: Redis unreachable, warming without the lock", self.lock.key
            )
            self.solo = True
        self._start_work()

    async def _release(self) -> None:
        # Compare-and-delete: a no-op when the lock is no longer ours. Shielded so a shutdown
        # cancelling us still hands the endpoint over at once instead of after the TTL.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.shield(asyncio.wait_for(self.lock.release(), self.call_timeout_s))

    async def run(self) -> None:
        try:
            while True:
                sent = self._clock()
                acquired = await self._try(self.lock.acquire, self.call_timeout_s)
                self.attempted = True
                if acquired:
                    await self._lead(sent)
                elif acquired is None:
                    self._go_solo()
                else:  # another process holds the lock
                    if self.solo:
                        log.info("leader lock %s: Redis back, another process leads", self.lock.key)
                    self.solo = False
                    await self._stop_work()
                await asyncio.sleep(self.period_s)
        finally:
            self._set(False)
            self.solo = False
            await self._stop_work()

    async def _lead(self, sent: float) -> None:
        """Hold the lock (taken by a call sent at ``sent``) until it is lost, Redis stops answering
        (then carry on solo), or the work ends."""
        log.info("leading key=%s token=%s", self.lock.key, self.lock.token)
        self.solo = False
        self._set(True)
        self._start_work()
        assert self._task is not None
        last_ok = sent
        try:
            while True:
                deadline = last_ok + self.ttl_s * 2 / 3
                wait_s = min(self.period_s, max(deadline - self._clock(), 0.0))
                done, _ = await asyncio.wait({self._task}, timeout=wait_s)
                if done:
                    if not self._task.cancelled() and self._task.exception() is not None:
                        log.error(
                            "work under %s failed", self.lock.key, exc_info=self._task.exception()
                        )
                    self._task = None
                    await self._release()
                    return
                sent = self._clock()
                if sent >= deadline:
                    log.warning("cannot renew %s: standing down before it expires", self.lock.key)
                    self._go_solo()
                    return
                renewed = await self._try(
                    self.lock.renew, min(self.call_timeout_s, deadline - sent)
                )
                if renewed:
                    last_ok = sent
                elif renewed is False:
                    log.warning("lost the lock %s to another process", self.lock.key)
                    await self._stop_work()
                    return
        except asyncio.CancelledError:
            await self._stop_work()
            await self._release()
            raise
        finally:
            self._set(False)
