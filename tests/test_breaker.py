"""The Redis breaker's state machine, on an injected clock."""

from __future__ import annotations

from router.breaker import CALL, DENIED, PROBE, Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def opened(clock: Clock) -> Breaker:
    breaker = Breaker(threshold=3, cooldown_s=1.0, clock=clock)
    for _ in range(3):
        breaker.failure(breaker.acquire())
    assert breaker.is_open
    return breaker


def test_three_failures_open_then_one_probe_per_cooldown() -> None:
    clock = Clock()
    breaker = opened(clock)
    assert breaker.acquire() == DENIED
    clock.now = 1.0
    assert breaker.acquire() == PROBE
    assert breaker.acquire() == DENIED  # one probe at a time
    breaker.success(PROBE)
    assert not breaker.is_open
    assert breaker.acquire() == CALL


def test_only_the_probe_closes_it() -> None:
    clock = Clock()
    breaker = opened(clock)
    breaker.success(CALL)  # a call sent before it opened, answering now
    assert breaker.is_open


def test_a_failed_probe_waits_another_cooldown() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.now = 1.0
    breaker.failure(breaker.acquire())
    assert breaker.acquire() == DENIED
    clock.now = 2.0
    assert breaker.acquire() == PROBE


def test_a_released_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.now = 1.0
    breaker.release(breaker.acquire())
    assert breaker.is_open
    assert breaker.acquire() == PROBE
