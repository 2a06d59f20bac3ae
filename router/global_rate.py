"""A tenant's ``limits.rps`` across all router replicas (SPEC "Scale-out").

The bucket lives in Redis (``wr:rate:{TENANT}``, one Lua script per refill decision, Redis's own
clock, so replicas' clocks do not matter). Replicas never ask Redis per request: each draws tokens in
batches of about 100 ms of its share and spends them locally; when its stock runs low it refills in
the background, and requests keep being decided locally meanwhile. So the hot path is a few
attribute reads and a subtraction.

Accuracy: Redis grants at most ``burst + rps * t`` tokens in ``t`` seconds to all replicas together.
A replica that runs dry while it has no sign of being over the limit may admit up to one batch on
credit (paid back from its next grant), so a quiet tenant's first request never waits for Redis;
once a grant comes back short, it admits only what it holds until Redis has more. Unused tokens
expire after a second (a replica must not sit on an old grant and spend it in a burst later).

Replica count: every replica refreshes its member of the sorted set ``wr:replicas:{router}`` each
second; members silent for 5 s drop out. With Redis down (or slower than the Redis budget: the
same breaker as the sticky buckets, SPEC rule 6), each replica admits ``rps / replicas`` with the
count it last saw, from a local bucket, and counts ``router_redis_errors_total``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from router.breaker import DENIED, Breaker
from router.limits import LocalBucket
from router.loops import cancel_and_wait, reraise_if_cancelling
from router.metrics import RouterMetrics
from router.redis_conn import RedisClient
from router.redis_keys import rate_key, replicas_key

log = logging.getLogger(__name__)

Clock = Callable[[], float]

BATCH_S = 0.1  # a batch is this much of the replica's share of the rate
MAX_BATCH = 1000
LEASE_S = 1.0  # granted tokens unused this long expire
HEARTBEAT_S = 1.0
REPLICA_TTL_S = 5.0

# KEYS[1]: the tenant's bucket (hash: tokens, ts). ARGV: rate, burst, tokens wanted.
# Returns {granted, ms until the rest of the batch would be there}.
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
elseif now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
else
  tokens = math.min(burst, tokens)
end
local got = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - got
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 10000)
local short = want - got - tokens
local wait_ms = 0
if short > 0 then wait_ms = math.ceil(short / rate * 1000) end
return {got, wait_ms}
"""

# KEYS[1]: the replica set. ARGV: member, ttl (ms). Returns how many replicas are alive.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"""


class SharedRate:
    """One tenant's draw on its Redis bucket. ``take`` never waits: it decides from local state."""

    __slots__ = (
        "_clock",
        "_rates",
        "burst",
        "fallback",
        "floor",
        "key",
        "lease_end",
        "low_water",
        "next_refill",
        "refilling",
        "retry_at",
        "rps",
        "stock",
    )

    def __init__(self, rates: GlobalRates, tenant_id: str, rps: float, burst: float) -> None:
        self._rates = rates
        self._clock = rates.clock
        self.key = rate_key(tenant_id)
        self.rps = rps
        self.burst = burst
        self.stock = 0  # tokens held; negative: admitted on credit, repaid from the next grant
        batch = self._batch()
        self.low_water = batch // 2
        self.floor = -batch  # admit while stock > floor; nothing known yet: on credit
        self.lease_end = 0.0
        self.next_refill = 0.0
        self.retry_at = 0.0  # when Redis expects the next batch (Retry-After)
        self.refilling = False
        self.fallback: LocalBucket | None = None  # set while Redis is away

    def update(self, rps: float, burst: float) -> None:
        self.rps = rps
        self.burst = burst
        if self.fallback is not None:
            share = self._rates.replicas
            self.fallback.update(rps / share, burst / share)

    def take(self) -> bool:
        now = self._clock()
        fallback = self.fallback
        if fallback is not None:
            if not self.refilling and now >= self.next_refill:
                self._refill(now)
            return fallback.take_at(now)
        stock = self.stock
        if stock > 0 and now >= self.lease_end:
            stock = 0
        admitted = stock > self.floor
        if admitted:
            stock -= 1
        self.stock = stock
        if stock <= self.low_water and not self.refilling and now >= self.next_refill:
            self._refill(now)
        return admitted

    def retry_after_s(self) -> float:
        if self.fallback is not None:
            return self.fallback.wait_s()
        return max(0.0, self.retry_at - self._clock())

    def _batch(self) -> int:
        share = self.rps / self._rates.replicas
        return max(1, min(MAX_BATCH, math.ceil(share * BATCH_S)))

    def _refill(self, now: float) -> None:
        rates = self._rates
        permit = rates.breaker.acquire()
        if permit == DENIED:
            self._redis_failed(now, count=False)
            return
        self.refilling = True
        batch = self._batch()
        want = batch - min(self.stock, 0)
        rates.spawn(self._run_refill(want, batch, permit))

    async def _run_refill(self, want: int, batch: int, permit: int) -> None:
        """``permit`` (from the breaker) gets exactly one verdict: only an in-budget answer is a
        success; a cancelled refill releases it, so a probe slot is never kept."""
        rates = self._rates
        call = asyncio.ensure_future(
            rates.take_script(keys=[self.key], args=[self.rps, self.burst, want])
        )
        in_budget = counted = False
        try:
            done, _ = await asyncio.wait((call,), timeout=rates.budget_s)
            in_budget = bool(done)
            if not in_budget:
                # Not cancelled: Redis takes the tokens whatever we do, so a late grant is spent.
                counted = True
                rates.breaker.failure(permit)
                self._redis_failed(self._clock(), count=True)
            raw = await call
        except (RedisError, OSError) as exc:
            reraise_if_cancelling(exc)
            if not counted:
                counted = True
                rates.breaker.failure(permit)
                self._redis_failed(self._clock(), count=True)
            log.debug("rate refill for %s failed: %r", self.key, exc)
            return
        finally:
            self.refilling = False
            if not counted and not in_budget:
                rates.breaker.release(permit)
        if in_budget:
            rates.breaker.success(permit)
            self.fallback = None
        self._granted(int(raw[0]), want, int(raw[1]), batch)

    def _granted(self, got: int, want: int, wait_ms: int, batch: int) -> None:
        now = self._clock()
        self.stock = min(self.stock, 0) + got if now >= self.lease_end else self.stock + got
        self.lease_end = now + LEASE_S
        self.low_water = batch // 2
        if got >= want:
            self.floor = -batch  # no sign of pressure: a dry stock may borrow one batch
            self.next_refill = now
        else:
            self.floor = 0  # over the limit: spend only what Redis gave
            self.retry_at = now + wait_ms / 1000
            self.next_refill = now + min(wait_ms / 1000, LEASE_S)

    def _redis_failed(self, now: float, *, count: bool) -> None:
        if count:
            self._rates.metrics.redis_errors.inc()
        if self.fallback is None:
            share = self._rates.replicas
            # Starts with what this replica could still admit (its stock down to the credit
            # floor), not a fresh burst: a Redis that flaps must not hand out a burst at every
            # flap, nor refuse a quiet tenant that was admitting on credit a moment ago.
            held = self.stock - self.floor
            self.fallback = LocalBucket(self.rps / share, self.burst / share, now, held)
            self.stock = 0
            self.floor = -1
        self.next_refill = now + self._rates.breaker.cooldown_s


class GlobalRates:
    """The replica's side of the global limits: heartbeat, replica count and the refill calls."""

    def __init__(
        self,
        redis: RedisClient,
        metrics: RouterMetrics,
        *,
        budget_s: float = 0.020,
        replica_id: str = "",
        breaker: Breaker | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        group: str = "router",
        clock: Clock = time.monotonic,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.budget_s = budget_s
        self.replica_id = replica_id or uuid.uuid4().hex
        self.breaker = breaker or Breaker()
        self.heartbeat_s = heartbeat_s
        self.replicas_key = replicas_key(group)
        self.clock = clock
        self.replicas = 1  # as last seen in Redis; at least this one
        self.take_script = redis.register_script(TAKE)
        self._heartbeat = redis.register_script(HEARTBEAT)
        self._tasks: set[asyncio.Task[None]] = set()

    def bucket(self, tenant_id: str, rps: float, burst: float) -> SharedRate:
        return SharedRate(self, tenant_id, rps, burst)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def beat(self) -> int:
        """Announce this replica; returns (and keeps) how many are alive."""
        count = await self._heartbeat(
            keys=[self.replicas_key], args=[self.replica_id, int(REPLICA_TTL_S * 1000)]
        )
        self.replicas = max(1, int(count))
        return self.replicas

    async def join(self) -> None:
        """First heartbeat at start-up, so the replica count is known before traffic; with Redis
        away the replica starts alone (count 1) and the loop keeps trying."""
        try:
            await asyncio.wait_for(self.beat(), timeout=max(self.budget_s * 10, 0.5))
        except (RedisError, OSError, TimeoutError) as exc:
            self.metrics.redis_errors.inc()
            log.warning("replica heartbeat failed at start: %r", exc)

    async def run(self) -> None:
        """Heartbeat loop; with Redis away the last count stands."""
        failing = False
        while True:
            try:
                await self.beat()
                if failing:
                    log.info("replica heartbeat back: replicas=%d", self.replicas)
                failing = False
            except (RedisError, OSError) as exc:
                reraise_if_cancelling(exc)
                self.metrics.redis_errors.inc()
                if not failing:
                    log.warning(
                        "replica heartbeat failed, keeping replicas=%d: %r", self.replicas, exc
                    )
                failing = True
            await asyncio.sleep(self.heartbeat_s)

    async def aclose(self) -> None:
        """Stop refills and leave the replica set, so the others' count drops at once."""
        await cancel_and_wait(list(self._tasks))
        try:
            await asyncio.wait_for(self.redis.zrem(self.replicas_key, self.replica_id), timeout=1.0)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("could not leave the replica set: %r", exc)
