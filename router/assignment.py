"""Sticky canary and A/B buckets (SPEC.md "Sticky buckets").

A unit's bucket comes from a deterministic hash of (salt, tenant, experiment, unit) onto [0, 1), so every
replica computes the same answer with no coordination. Redis stores the first assignment so later weight
changes do not move units (ab), with one round trip (a Lua get-or-set that also works on Redis 6.2);
each use renews the stored assignment's TTL. In a canary the canary owns exactly [0, share): the share
always matches the weight, whatever was stored during an earlier ramp (rule 3).
Redis is an optimisation of stickiness, never a dependency: past the budget or with the breaker open
the hash decides.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from redis.exceptions import RedisError

from router.breaker import DENIED, Breaker
from router.loops import reraise_if_cancelling
from router.metrics import RouterMetrics
from router.redis_conn import RedisClient
from tenancy.models import Experiment, Variant

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "default"
_TWO_64 = float(1 << 64)

# KEYS[1]: the unit's key. ARGV[1]: candidate variant, ARGV[2]: TTL (s), ARGV[3..]: stored values that
# still stand. Returns the stored value when it stands (renewing its TTL: each use renews), else
# stores the candidate and returns false.
GET_OR_SET = """
local cur = redis.call('GET', KEYS[1])
if cur then
  for i = 3, #ARGV do
    if cur == ARGV[i] then
      redis.call('EXPIRE', KEYS[1], ARGV[2])
      return cur
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


@dataclass(frozen=True, slots=True)
class Assignment:
    variant: str
    model: str
    source: str  # override | stored | hash | weighted (SPEC); "default" when no experiment runs


def unit_hash(salt: str, tenant: str, experiment: str, unit: str) -> float:
    digest = hashlib.blake2b(
        f"{salt}\x1f{tenant}\x1f{experiment}\x1f{unit}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / _TWO_64


class ExperimentPlan:
    """An experiment compiled for fast decisions; rebuilt when the config changes.

    ``canary_share`` overrides the canary's share of units (0..1) that the file's weights give: the
    effective weight of a progressive rollout (a rollout step of weight w is ``canary_share=w/100``;
    0 is the rollback). Build a new plan when the effective share changes, not per request
    (``with_canary_share``); every decision then follows rule 3 at that share, and cached decisions
    of the old share are never reused (the share is part of ``cache_id``).
    """

    def __init__(
        self, tenant_id: str, experiment: Experiment, *, canary_share: float | None = None
    ) -> None:
        self.tenant_id = tenant_id
        self.experiment = experiment
        self.kind = experiment.kind
        self.ttl_s = experiment.ttl_s
        salt_tag = hashlib.blake2b(experiment.salt.encode(), digest_size=4).hexdigest()
        self.key_prefix = f"wr:asg:{{{tenant_id}:{experiment.name}}}:{salt_tag}:"
        self._by_name = {v.name: v for v in experiment.variants}
        self.open = tuple(v for v in experiment.variants if v.weight > 0)
        self.canary_share = 0.0
        if experiment.kind == "canary":
            control, canary = experiment.variants
            self.control, self.canary = control, canary
            if canary_share is None:
                canary_share = canary.weight / (control.weight + canary.weight)
            self.canary_share = min(max(canary_share, 0.0), 1.0)
        elif canary_share is not None:
            raise ValueError("canary_share applies to canary experiments only")
        total = sum(v.weight for v in self.open)
        self._bounds = [w / total for w in accumulate(v.weight for v in self.open)]
        # Cached decisions are valid for exactly this tenant, experiment config and share: two
        # tenants with identical experiments never share one (SPEC rule 1).
        self.cache_id = hashlib.blake2b(
            f"{tenant_id}\x1f{experiment.model_dump_json()}\x1f{self.canary_share!r}".encode(),
            digest_size=16,
        ).hexdigest()
        # Stored values that win over the hash's candidate, per candidate. Canary: only the
        # candidate itself (the share decides, rule 3); ab: any open variant (closed ones are
        # re-decided).
        self._standing = {
            v.name: (v.name,) if self.kind == "canary" else tuple(o.name for o in self.open)
            for v in experiment.variants
        }

    def with_canary_share(self, share: float) -> ExperimentPlan:
        """The same experiment at another effective canary share (for progressive rollout)."""
        return ExperimentPlan(self.tenant_id, self.experiment, canary_share=share)

    @property
    def rolled_back(self) -> bool:
        return self.kind == "canary" and self.canary_share == 0.0

    def variant(self, name: str) -> Variant | None:
        return self._by_name.get(name)

    def by_point(self, point: float) -> Variant:
        if self.kind == "canary":
            return self.canary if point < self.canary_share else self.control
        index = min(bisect_right(self._bounds, point), len(self.open) - 1)
        return self.open[index]

    def by_hash(self, unit: str) -> Variant:
        e = self.experiment
        return self.by_point(unit_hash(e.salt, self.tenant_id, e.name, unit))

    def standing(self, candidate: Variant) -> tuple[str, ...]:
        """Stored values that win over the hash's ``candidate``."""
        return self._standing[candidate.name]


# A cached decision: (variant name, expires at (clock), the unit's Redis key, its TTL in s).
_Cached = tuple[str, float, str, int]


class Assigner:
    """Decides a unit's variant: override > rollback > stored (Redis) > hash."""

    def __init__(
        self,
        redis: RedisClient,
        metrics: RouterMetrics,
        *,
        budget_s: float = 0.020,
        breaker: Breaker | None = None,
        cache_size: int = 100_000,
        cache_ttl_s: float = 300.0,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.budget_s = budget_s
        self.breaker = breaker or Breaker()
        self.script = redis.register_script(GET_OR_SET)
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl_s = cache_ttl_s
        self._rng = rng
        self._clock = clock
        self._late: set[asyncio.Future[bytes | str | None]] = set()
        # Keys used from the cache since the last flush -> TTL: renewed in one batch, off the
        # request path (each use renews, SPEC rule 2, without a round trip per cached request).
        self._renew: dict[str, int] = {}
        self._count = {
            s: metrics.assignments.labels(s) for s in ("override", "stored", "hash", "weighted")
        }

    async def assign(self, plan: ExperimentPlan, unit: str | None) -> Assignment:
        decided = await self._decide(plan, unit, store=True)
        self._count[decided.source].inc()
        return decided

    async def peek(self, plan: ExperimentPlan, unit: str) -> Assignment:
        """What ``assign`` would answer, without storing, renewing or counting anything (admin)."""
        return await self._decide(plan, unit, store=False)

    async def _decide(self, plan: ExperimentPlan, unit: str | None, *, store: bool) -> Assignment:
        if not unit:  # absent or empty: routed by weight, not stickily (SPEC rule 1)
            chosen = plan.by_point(self._rng())
            return Assignment(chosen.name, chosen.model, "weighted")
        forced = plan.experiment.override_for(unit)
        if forced is not None:
            return Assignment(forced.name, forced.model, "override")
        if plan.rolled_back:
            return Assignment(plan.control.name, plan.control.model, "hash")
        candidate = plan.by_hash(unit)
        cache_key = (plan.cache_id, unit)
        cached = self._cache.get(cache_key)
        now = self._clock()
        # With the breaker open Redis is known bad: the hash decides, so replicas agree (SPEC 6).
        if cached is not None and cached[1] > now and not self.breaker.is_open:
            variant = plan.variant(cached[0])
            if variant is not None:
                self._cache.move_to_end(cache_key)
                if store:
                    self._renew[cached[2]] = cached[3]
                return Assignment(variant.name, variant.model, "stored")
        key = plan.key_prefix + unit
        stored = await self._stored(plan, key, candidate, store=store)
        if stored is None:
            return Assignment(candidate.name, candidate.model, "hash")
        variant = plan.variant(stored) if stored != "" else None
        if store:
            self._remember(cache_key, ((variant or candidate).name, now, key, plan.ttl_s))
        if variant is None:  # newly stored candidate ("") or a value no longer in the config
            return Assignment(candidate.name, candidate.model, "hash")
        return Assignment(variant.name, variant.model, "stored")

    async def _stored(
        self, plan: ExperimentPlan, key: str, candidate: Variant, *, store: bool
    ) -> str | None:
        """The stored value that stands ("" when the candidate was just stored); None: no answer.

        The Redis call is never cancelled: past the budget the request goes on with the hash while
        the call finishes in the background. Cancelling would drop its pooled connection (more
        reconnects exactly when Redis or the loop is slow) and lose the first assignment's write.
        A late answer says nothing good about Redis: only an answer within the budget counts as a
        success for the breaker (SPEC rule 6).
        """
        permit = self.breaker.acquire()
        if permit == DENIED:
            return None
        call = asyncio.ensure_future(self._call(plan, key, candidate, store=store))
        try:
            done, _ = await asyncio.wait((call,), timeout=self.budget_s)
        except BaseException:  # cancelled while waiting: no verdict, but free the probe slot
            self.breaker.release(permit)
            self._keep_late(call)
            raise
        if not done:
            self.breaker.failure(permit)
            self.metrics.redis_errors.inc()
            self._keep_late(call)
            return None
        try:
            raw = call.result()
        except (RedisError, OSError) as exc:
            self.breaker.failure(permit)
            self.metrics.redis_errors.inc()
            log.debug("redis unavailable for assignment: %r", exc)
            return None
        except BaseException:
            self.breaker.release(permit)
            raise
        self.breaker.success(permit)
        if raw is None:  # Lua false arrives as None: the candidate was stored
            return "" if store else None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def _call(
        self, plan: ExperimentPlan, key: str, candidate: Variant, *, store: bool
    ) -> bytes | str | None:
        standing = plan.standing(candidate)
        if store:
            raw: bytes | str | None = await self.script(
                keys=[key], args=[candidate.name, plan.ttl_s, *standing]
            )
            return raw
        value = await self.redis.get(key)
        text = value.decode() if isinstance(value, bytes) else value
        return text if text is not None and text in standing else None

    def _keep_late(self, call: asyncio.Future[bytes | str | None]) -> None:
        self._late.add(call)
        call.add_done_callback(self._late_answer)

    def _late_answer(self, call: asyncio.Future[bytes | str | None]) -> None:
        self._late.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved, never raised: a late answer neither opens nor closes

    def _remember(self, key: tuple[str, str], decided: _Cached) -> None:
        cache = self._cache
        variant, now, redis_key, ttl_s = decided
        cache[key] = (variant, now + self._cache_ttl_s, redis_key, ttl_s)
        cache.move_to_end(key)
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()

    async def flush_renewals(self) -> int:
        """Renew the TTL of every assignment used from the cache since the last flush (one
        pipeline, no transaction). Returns how many keys were sent. Skipped while the breaker is
        open: the cache is bypassed then, and Redis known bad."""
        if not self._renew or self.breaker.is_open:
            return 0
        pending, self._renew = self._renew, {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, ttl_s in pending.items():
                pipe.expire(key, ttl_s)
            await pipe.execute()
        return len(pending)

    async def run_renewals(self, interval_s: float = 1.0) -> None:
        """Flush renewals every ``interval_s`` until cancelled; Redis errors are logged, not fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush_renewals()
            except (RedisError, OSError) as exc:
                reraise_if_cancelling(exc)
                log.debug("assignment TTL renewal failed: %r", exc)

    async def aclose(self) -> None:
        """Let late Redis calls finish (they store first assignments) and send the last renewals,
        briefly."""
        if self._late:
            await asyncio.wait(set(self._late), timeout=1.0)
        try:
            async with asyncio.timeout(1.0):
                await self.flush_renewals()
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("last assignment TTL renewal failed: %r", exc)
