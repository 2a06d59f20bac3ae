"""Per-tenant admission: a concurrency cap and a token-bucket rate, so one noisy tenant cannot starve
the others. Both refuse at once (429 with Retry-After) instead of queueing: a queued request would only
time out later while holding memory.

``max_concurrency`` is per replica (requests in flight here). The rate is whatever ``RateGate`` the
limiter is given: the router gives it the tenant's share of the global bucket in Redis
(``router.global_rate``); without one it is a bucket of this process alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from router.errors import RateLimited

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class LimitSpec:
    max_concurrency: int | None
    rps: float | None
    burst: int | None


class RateGate(Protocol):
    def take(self) -> bool:
        """Admit one request now (True) or not; never waits."""
        ...

    def retry_after_s(self) -> float: ...

    def update(self, rps: float, burst: float) -> None: ...


RateFactory = Callable[[float, float], RateGate]  # (rps, burst) -> gate


class LocalBucket:
    """A token bucket in this process only, driven by the caller's clock readings."""

    __slots__ = ("_tokens", "_updated", "burst", "rps")

    def __init__(self, rps: float, burst: float, now: float, tokens: float | None = None) -> None:
        self.rps = rps
        self.burst = max(1.0, burst)
        self._tokens = self.burst if tokens is None else min(self.burst, max(0.0, tokens))
        self._updated = now

    def update(self, rps: float, burst: float) -> None:
        self.rps = rps
        self.burst = max(1.0, burst)
        self._tokens = min(self._tokens, self.burst)

    def take_at(self, now: float) -> bool:
        tokens = min(self.burst, self._tokens + (now - self._updated) * self.rps)
        self._updated = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def wait_s(self) -> float:
        return max(0.0, (1.0 - self._tokens) / self.rps)


class LocalRate(LocalBucket):
    """``LocalBucket`` as a ``RateGate``: the limit of one process."""

    __slots__ = ("_clock",)

    def __init__(self, rps: float, burst: float, *, clock: Clock = time.monotonic) -> None:
        super().__init__(rps, burst, clock())
        self._clock = clock

    def take(self) -> bool:
        return self.take_at(self._clock())

    def retry_after_s(self) -> float:
        return self.wait_s()


def default_burst(spec: LimitSpec) -> float:
    assert spec.rps is not None
    return float(spec.burst if spec.burst is not None else max(1, math.ceil(spec.rps)))


class TenantLimiter:
    """Admission for one tenant. Survives config reloads; ``update`` changes its numbers in place."""

    __slots__ = ("_make_rate", "in_flight", "max_concurrency", "rate", "rps")

    def __init__(
        self,
        spec: LimitSpec,
        *,
        rate_factory: RateFactory | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._make_rate: RateFactory = rate_factory or (
            lambda rps, burst: LocalRate(rps, burst, clock=clock)
        )
        self.in_flight = 0
        self.max_concurrency: int | None = None
        self.rps: float | None = None
        self.rate: RateGate | None = None
        self.update(spec)

    def update(self, spec: LimitSpec) -> None:
        self.max_concurrency = spec.max_concurrency
        self.rps = spec.rps
        if spec.rps is None:
            self.rate = None
        elif self.rate is None:
            self.rate = self._make_rate(spec.rps, default_burst(spec))
        else:
            self.rate.update(spec.rps, default_burst(spec))

    def acquire(self) -> None:
        """Admit one request or raise RateLimited; pair every success with ``release``."""
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            raise RateLimited(
                f"tenant is at its concurrency limit ({self.max_concurrency})", retry_after=1
            )
        rate = self.rate
        if rate is not None and not rate.take():
            raise RateLimited(
                f"tenant is over its rate limit ({self.rps:g} requests/s)",
                retry_after=max(1, math.ceil(rate.retry_after_s())),
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
