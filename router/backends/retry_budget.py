"""A retry budget: retries may be at most a share of an endpoint's recent requests.

A retry rescues a request from one broken instance; across a failing fleet, retrying everything would
double the load at the worst moment. So retries are capped by ``ratio`` of the requests seen over the
last ``window_s`` seconds (plus a small floor, so a lightly used endpoint can still retry), counted in
one-second buckets: a few integer operations per request, no allocation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

RATIO = 0.2
WINDOW_S = 10
# Per window: at low traffic an instance that just died must still be retried around until the
# ejection (5 failures) takes it out, and the first request after a quiet spell is rescued too.
MIN_RETRIES = 10


class RetryBudget:
    __slots__ = ("_clock", "_min", "_ratio", "_requests", "_retries", "_second", "_window")

    def __init__(
        self,
        *,
        ratio: float = RATIO,
        window_s: int = WINDOW_S,
        min_retries: int = MIN_RETRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._window = window_s
        self._min = min_retries
        self._clock = clock
        self._requests = [0] * window_s
        self._retries = [0] * window_s
        self._second = int(clock())

    def _bucket(self) -> int:
        """The current second's bucket, emptying the buckets of seconds that passed unseen."""
        second = int(self._clock())
        passed = second - self._second
        if passed:
            for s in range(self._second + 1, self._second + 1 + min(passed, self._window)):
                self._requests[s % self._window] = 0
                self._retries[s % self._window] = 0
            self._second = second
        return second % self._window

    def record_request(self) -> None:
        """Count one request sent to the endpoint (a first attempt, not a retry)."""
        self._requests[self._bucket()] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when the recent retries used it up."""
        bucket = self._bucket()
        allowed = self._ratio * sum(self._requests) + self._min
        if sum(self._retries) + 1 > allowed:
            return False
        self._retries[bucket] += 1
        return True
