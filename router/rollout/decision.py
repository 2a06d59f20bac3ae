"""The rollout's decisions as pure functions: no I/O, no clock of their own.

``judge`` looks at one window of figures (since the current step began, summed over replicas) and
says hold, step, complete or fail; ``act`` applies an operator's command. The controller reads the
figures, calls these, and applies the outcome with a compare-and-set, so what is decided here is
testable without Redis and the same on every replica.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from router.rollout.figures import Window
from tenancy.rollout import Rollout

Status = Literal["progressing", "paused", "rolled_back", "complete"]
Event = Literal["step", "paused", "resumed", "rolled_back", "complete"]
Action = Literal["pause", "resume", "promote", "rollback"]
STATUSES: tuple[Status, ...] = ("progressing", "paused", "rolled_back", "complete")
ACTIONS: tuple[Action, ...] = ("pause", "resume", "promote", "rollback")

# A guardrail broken by more than this factor ends the rollout before min_requests...
SEVERE_FACTOR = 5.0
# ...once the canary has answered at least this many requests (or min_requests, if fewer):
# a single failed request is no evidence of anything.
SEVERE_MIN_REQUESTS = 10


@dataclass(frozen=True, slots=True)
class RolloutState:
    """What Redis holds for one tenant experiment. ``seq`` grows with every change (the CAS
    token, and the name of the window the figures are counted in)."""

    fingerprint: str
    seq: int
    step: int  # index into rollout.steps
    status: Status
    since: float  # Redis clock, seconds
    reason: str


@dataclass(frozen=True, slots=True)
class Change:
    """A new status and step, the event to count and log, and why."""

    status: Status
    step: int
    event: Event
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    change: Change | None  # None: hold
    reason: str  # why (also for a hold: what the step is waiting for)


class ActionRefused(Exception):
    """The operator's command does not apply to the rollout's status."""


def weight_of(rollout: Rollout, state: RolloutState) -> float:
    """The canary weight (percent) in effect."""
    if state.status == "rolled_back":
        return 0.0
    if state.status == "complete":
        return 100.0
    return rollout.steps[min(state.step, len(rollout.steps) - 1)]


@dataclass(frozen=True, slots=True)
class Guardrails:
    error_rate_increase: float  # canary minus control, as a fraction
    latency_ratio: float | None  # canary p95 / control p95; None without timings on both sides
    broken: str | None  # which guardrail is broken and by how much; None: all hold
    factor: float  # how far over its limit the worst guardrail is (1.0 = at the limit)

    def describe(self) -> dict[str, float | str | None]:
        return {
            "error_rate_increase": round(self.error_rate_increase, 4),
            "latency_ratio": None if self.latency_ratio is None else round(self.latency_ratio, 3),
            "broken": self.broken,
        }


def _over(value: float, limit: float) -> float:
    if limit > 0:
        return value / limit
    return math.inf if value > 0 else 0.0


def guardrails(rollout: Rollout, window: Window) -> Guardrails:
    canary, control = window.canary, window.control
    increase = canary.error_rate - control.error_rate if canary.requests else 0.0
    canary_p95, control_p95 = canary.p95_s(), control.p95_s()
    ratio = None
    latency_text = ""
    if canary_p95 is not None and control_p95 is not None and control_p95 > 0:
        ratio = canary_p95 / control_p95
        latency_text = (
            f"canary p95 {canary_p95 * 1000:.1f} ms is {ratio:.2f}x control's "
            f"{control_p95 * 1000:.1f} ms (limit {rollout.max_latency_ratio:g}x)"
        )
    error_factor = _over(increase, rollout.max_error_rate_increase)
    latency_factor = 0.0 if ratio is None else ratio / rollout.max_latency_ratio
    broken = None
    if increase > rollout.max_error_rate_increase:
        broken = (
            f"canary error rate {canary.error_rate:.1%} vs control {control.error_rate:.1%} "
            f"(+{increase * 100:.1f} points, limit {rollout.max_error_rate_increase * 100:g})"
        )
    elif ratio is not None and ratio > rollout.max_latency_ratio:
        broken = latency_text
    return Guardrails(increase, ratio, broken, max(error_factor, latency_factor))


def judge(rollout: Rollout, state: RolloutState, window: Window, now: float) -> Verdict:
    """Hold, step up, complete, or fail (rollback or pause as configured)."""
    if state.status != "progressing":
        return Verdict(None, f"{state.status}: nothing to judge")
    checks = guardrails(rollout, window)
    canary_requests = window.canary.requests
    severe_after = min(rollout.min_requests, SEVERE_MIN_REQUESTS)
    if checks.broken is not None and (
        canary_requests >= rollout.min_requests
        or (checks.factor > SEVERE_FACTOR and canary_requests >= severe_after)
    ):
        reason = f"guardrail broken at {rollout.steps[state.step]:g}%: {checks.broken}"
        if rollout.on_failure == "rollback":
            return Verdict(Change("rolled_back", state.step, "rolled_back", reason), reason)
        return Verdict(Change("paused", state.step, "paused", reason), reason)
    waited = now - state.since
    if waited < rollout.step_s or canary_requests < rollout.min_requests:
        return Verdict(
            None,
            f"waiting: {min(waited, rollout.step_s):.0f} of {rollout.step_s:g} s, "
            f"{canary_requests} of {rollout.min_requests} canary requests",
        )
    if checks.broken is not None:  # broken but below the request count: not judged yet
        return Verdict(None, f"waiting for evidence: {checks.broken}")
    done = rollout.steps[state.step]
    if state.step + 1 >= len(rollout.steps):
        reason = f"step {done:g}% passed; the canary now takes all traffic"
        return Verdict(Change("complete", state.step, "complete", reason), reason)
    following = rollout.steps[state.step + 1]
    reason = f"step {done:g}% passed; canary weight now {following:g}%"
    return Verdict(Change("progressing", state.step + 1, "step", reason), reason)


def act(rollout: Rollout, state: RolloutState, action: Action) -> Change:
    """An operator's command; raises ActionRefused when it does not apply."""
    status = state.status
    if action == "pause":
        if status != "progressing":
            raise ActionRefused(f"the rollout is {status}; only a progressing one can pause")
        return Change("paused", state.step, "paused", "paused by the operator")
    if action == "resume":
        if status == "paused":
            return Change("progressing", state.step, "resumed", "resumed by the operator")
        if status == "rolled_back":
            first = rollout.steps[0]
            return Change("progressing", 0, "resumed", f"resumed by the operator at {first:g}%")
        raise ActionRefused(f"the rollout is {status}; only a paused or rolled-back one resumes")
    if action == "promote":
        if status == "complete":
            raise ActionRefused("the rollout is already complete")
        return Change("complete", state.step, "complete", "promoted by the operator")
    if status == "rolled_back":
        raise ActionRefused("the rollout is already rolled back")
    return Change("rolled_back", state.step, "rolled_back", "rolled back by the operator")
