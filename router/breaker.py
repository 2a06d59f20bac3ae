"""A small circuit breaker: after repeated failures stop calling, then let one probe through.

Each call is given a permit by ``acquire`` and must hand it back exactly once: ``success`` (an
answer within the caller's budget), ``failure``, or ``release`` (the caller gave up, e.g. it was
cancelled: no verdict). Only the probe's in-budget success closes an open breaker; a call that was
already in flight when the breaker opened, or that answered late, cannot close it. Permits are plain
ints so the hot path allocates nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DENIED = 0  # do not call
CALL = 1  # a normal call (breaker closed)
PROBE = 2  # the one trial call while open


class Breaker:
    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

    def acquire(self) -> int:
        """A permit for a call now: CALL when closed; while open, one PROBE per cooldown, else DENIED."""
        if self._failures < self.threshold:
            return CALL
        if self._probing or self._clock() < self._open_until:
            return DENIED
        self._probing = True
        return PROBE

    def success(self, permit: int) -> None:
        if permit == PROBE:
            self._probing = False
            self._failures = 0
        elif permit == CALL and self._failures < self.threshold:
            self._failures = 0  # a stray in-flight success must not close an open breaker

    def failure(self, permit: int) -> None:
        if permit == DENIED:
            return
        if permit == PROBE:
            self._probing = False
        self._failures += 1
        if self._failures >= self.threshold:
            self._open_until = self._clock() + self.cooldown_s

    def release(self, permit: int) -> None:
        """The caller gave up without a verdict: free the probe slot so probing goes on."""
        if permit == PROBE:
            self._probing = False
