"""Per-tenant admission: a concurrency cap and a token-bucket rate, so one noisy tenant cannot starve
the others on a replica. Both refuse at once (429 with Retry-After) instead of queueing: a queued
request would only time out later while holding memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.errors import RateLimited

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class LimitSpec:
    max_concurrency: int | None
    rps: float | None
    burst: int | None


class TenantLimiter:
    """Admission for one tenant. Survives config reloads; ``update`` changes its numbers in place."""

    __slots__ = ("_clock", "_tokens", "_updated", "burst", "in_flight", "max_concurrency", "rps")

    def __init__(self, spec: LimitSpec, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.in_flight = 0
        self.max_concurrency: int | None = None
        self.rps: float | None = None
        self.burst = 0.0
        self.update(spec)
        self._tokens = self.burst
        self._updated = clock()

    def update(self, spec: LimitSpec) -> None:
        self.max_concurrency = spec.max_concurrency
        self.rps = spec.rps
        if spec.rps is not None:
            self.burst = float(
                spec.burst if spec.burst is not None else max(1, math.ceil(spec.rps))
            )
            self._tokens = min(getattr(self, "_tokens", self.burst), self.burst)

    def acquire(self) -> None:
        """Admit one request or raise RateLimited; pair every success with ``release``."""
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            raise RateLimited(
                f"tenant is at its concurrency limit ({self.max_concurrency})", retry_after=1
            )
        rps = self.rps
        if rps is not None:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._updated) * rps)
            self._updated = now
            if tokens < 1.0:
                self._tokens = tokens
                wait = (1.0 - tokens) / rps
                raise RateLimited(
                    f"tenant is over its rate limit ({rps:g} requests/s)",
                    retry_after=max(1, math.ceil(wait)),
                )
            self._tokens = tokens - 1.0
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
