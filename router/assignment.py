"""Sticky canary and A/B buckets (SPEC.md "Sticky buckets").

A unit's bucket comes from a deterministic hash of (salt, tenant, experiment, unit) onto [0, 1), so every
replica computes the same answer with no coordination. Redis stores the first assignment so later weight
changes do not move units (ab), with one round trip (a Lua get-or-set that also works on Redis 6.2).
Canary ranges put the canary at [0, share): raising the share only pulls control units in.
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

from router.breaker import Breaker
from router.metrics import RouterMetrics
from router.redis_conn import RedisClient
from tenancy.models import Experiment, Variant

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "default"
_TWO_64 = float(1 << 64)

# KEYS[1]: the unit's key. ARGV[1]: candidate variant, ARGV[2]: TTL (s), ARGV[3..]: stored values that
# still stand. Returns the stored value when it stands, else stores the candidate and returns false.
GET_OR_SET = """
local cur = redis.call('GET', KEYS[1])
if cur then
  for i = 3, #ARGV do
    if cur == ARGV[i] then return cur end
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
    """An experiment compiled for fast decisions; rebuilt when the config changes."""

    def __init__(self, tenant_id: str, experiment: Experiment) -> None:
        self.tenant_id = tenant_id
        self.experiment = experiment
        self.kind = experiment.kind
        self.ttl_s = experiment.ttl_s
        salt_tag = hashlib.blake2b(experiment.salt.encode(), digest_size=4).hexdigest()
        self.key_prefix = f"wr:asg:{{{tenant_id}:{experiment.name}}}:{salt_tag}:"
        # Any change to the experiment invalidates cached decisions (weights, salt, overrides).
        self.version = hash(experiment.model_dump_json())
        self._by_name = {v.name: v for v in experiment.variants}
        self.open = tuple(v for v in experiment.variants if v.weight > 0)
        if experiment.kind == "canary":
            control, canary = experiment.variants
            self.control, self.canary = control, canary
            self.canary_share = canary.weight / (control.weight + canary.weight)
        total = sum(v.weight for v in self.open)
        self._bounds = [w / total for w in accumulate(v.weight for v in self.open)]

    @property
    def rolled_back(self) -> bool:
        return self.kind == "canary" and self.canary.weight == 0

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
        if self.kind == "canary":
            # A stored canary stays canary (never back) while the canary is open; a stored control
            # gives way when the ramp pulls the unit into canary.
            return tuple(dict.fromkeys((self.canary.name, candidate.name)))
        return tuple(v.name for v in self.open)  # closed ab variants are re-decided


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
        self._script = redis.register_script(GET_OR_SET)
        self._cache: OrderedDict[tuple[int, str], tuple[str, float]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl_s = cache_ttl_s
        self._rng = rng
        self._clock = clock
        self._late: set[asyncio.Future[bytes | str | None]] = set()
        self._count = {
            s: metrics.assignments.labels(s) for s in ("override", "stored", "hash", "weighted")
        }

    async def assign(self, plan: ExperimentPlan, unit: str | None) -> Assignment:
        decided = await self._decide(plan, unit, store=True)
        self._count[decided.source].inc()
        return decided

    async def peek(self, plan: ExperimentPlan, unit: str) -> Assignment:
        """What ``assign`` would answer, without storing or counting anything (admin)."""
        return await self._decide(plan, unit, store=False)

    async def _decide(self, plan: ExperimentPlan, unit: str | None, *, store: bool) -> Assignment:
        if unit is None:
            chosen = plan.by_point(self._rng())
            return Assignment(chosen.name, chosen.model, "weighted")
        forced = plan.experiment.override_for(unit)
        if forced is not None:
            return Assignment(forced.name, forced.model, "override")
        if plan.rolled_back:
            return Assignment(plan.control.name, plan.control.model, "hash")
        candidate = plan.by_hash(unit)
        cache_key = (plan.version, unit)
        cached = self._cache.get(cache_key)
        now = self._clock()
        # With the breaker open Redis is known bad: the hash decides, so replicas agree (SPEC 6).
        if cached is not None and cached[1] > now and not self.breaker.is_open:
            self._cache.move_to_end(cache_key)
            variant = plan.variant(cached[0])
            if variant is not None:
                return Assignment(variant.name, variant.model, "stored")
        stored = await self._stored(plan, unit, candidate, store=store)
        if stored is None:
            return Assignment(candidate.name, candidate.model, "hash")
        variant = plan.variant(stored) if stored != "" else None
        if store:
            self._remember(cache_key, (variant or candidate).name, now)
        if variant is None:  # newly stored candidate ("") or a value no longer in the config
            return Assignment(candidate.name, candidate.model, "hash")
        return Assignment(variant.name, variant.model, "stored")

    async def _stored(
        self, plan: ExperimentPlan, unit: str, candidate: Variant, *, store: bool
    ) -> str | None:
        """The stored value that stands ("" when the candidate was just stored); None: no answer.

        The Redis call is never cancelled: past the budget the request goes on with the hash while
        the call finishes in the background. Cancelling would drop its pooled connection (more
        reconnects exactly when Redis or the loop is slow) and lose the first assignment's write.
        """
        if not self.breaker.allow():
            return None
        call = asyncio.ensure_future(self._call(plan, unit, candidate, store=store))
        done, _ = await asyncio.wait((call,), timeout=self.budget_s)
        if not done:
            self.breaker.failure()
            self.metrics.redis_errors.inc()
            self._late.add(call)
            call.add_done_callback(self._late_answer)
            return None
        try:
            raw = call.result()
        except (RedisError, OSError) as exc:
            self.breaker.failure()
            self.metrics.redis_errors.inc()
            log.debug("redis unavailable for assignment: %r", exc)
            return None
        self.breaker.success()
        if raw is None:  # Lua false arrives as None: the candidate was stored
            return "" if store else None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def _call(
        self, plan: ExperimentPlan, unit: str, candidate: Variant, *, store: bool
    ) -> bytes | str | None:
        key = plan.key_prefix + unit
        if store:
            standing = plan.standing(candidate)
            raw: bytes | str | None = await self._script(
                keys=[key], args=[candidate.name, plan.ttl_s, *standing]
            )
            return raw
        value = await self.redis.get(key)
        text = value.decode() if isinstance(value, bytes) else value
        return text if text is not None and text in plan.standing(candidate) else None

    def _late_answer(self, call: asyncio.Future[bytes | str | None]) -> None:
        self._late.discard(call)
        if call.cancelled():
            return
        if call.exception() is None:
            self.breaker.success()  # Redis did answer: slow, not down

    def _remember(self, key: tuple[int, str], variant: str, now: float) -> None:
        cache = self._cache
        cache[key] = (variant, now + self._cache_ttl_s)
        cache.move_to_end(key)
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()

    async def aclose(self) -> None:
        """Let late Redis calls finish (they store first assignments), briefly."""
        if self._late:
            await asyncio.wait(set(self._late), timeout=1.0)
