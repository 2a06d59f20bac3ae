"""The rollout's pure parts: figures from counts, the judge, the operator's commands, the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.rollout.counter import WindowCounter
from router.rollout.decision import (
    ActionRefused,
    RolloutState,
    Status,
    act,
    judge,
    weight_of,
)
from router.rollout.figures import BUCKETS, LATENCY_BOUNDS_S, VariantFigures, Window
from tenancy.loader import load_directory
from tenancy.rollout import Rollout

ROLLOUT = Rollout(
    steps=(5, 20, 50, 100),
    step_s=60,
    min_requests=100,
    max_error_rate_increase=0.01,
    max_latency_ratio=1.5,
)


def state(step: int = 0, status: Status = "progressing", since: float = 1000.0) -> RolloutState:
    return RolloutState("fp", 7, step, status, since, "")


def figures(requests: int, errors: int = 0, latency_s: float = 0.004) -> VariantFigures:
    counter = WindowCounter("control", "canary")
    for i in range(requests):
        counter.count("canary", 502 if i < errors else 200)
        counter.observe("canary", latency_s)
    pairs = counter.drain()
    fields = {str(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    return Window.from_fields(fields).canary


def window(canary: VariantFigures, control: VariantFigures | None = None) -> Window:
    return Window(control=control or figures(1000), canary=canary)


def test_p95_reads_the_bucket_the_95th_percent_falls_in() -> None:
    fast = [0] * BUCKETS
    fast[LATENCY_BOUNDS_S.index(0.005)] = 96  # 4-5 ms
    fast[LATENCY_BOUNDS_S.index(0.1)] = 4  # 75-100 ms: the slow 4 % stays out of p95
    p95 = VariantFigures(100, 0, tuple(fast)).p95_s()
    assert p95 is not None
    assert 0.004 < p95 <= 0.005
    assert VariantFigures().p95_s() is None


def test_counter_counts_5xx_class_as_errors_and_ignores_other_variants() -> None:
    counter = WindowCounter("control", "canary")
    for status in (200, 400, 429, 500, 502, 504):
        counter.count("canary", status)
    counter.count("default", 500)
    pairs = counter.drain()
    fields = {str(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    assert (fields["canary:n"], fields["canary:e"]) == (6, 3)
    assert not any(name.startswith("control") for name in fields)
    assert counter.drain() == []  # drained: the next flush starts from zero


def test_holds_until_the_step_has_lasted_and_has_its_requests() -> None:
    healthy = window(figures(100))
    assert judge(ROLLOUT, state(), healthy, now=1000 + 59).change is None
    assert judge(ROLLOUT, state(), window(figures(99)), now=1000 + 61).change is None
    change = judge(ROLLOUT, state(), healthy, now=1000 + 60).change
    assert change is not None
    assert (change.status, change.step, change.event) == ("progressing", 1, "step")


def test_the_last_step_completes_and_keeps_100() -> None:
    verdict = judge(ROLLOUT, state(step=3), window(figures(100)), now=2000)
    assert verdict.change is not None
    assert verdict.change.status == "complete"
    assert weight_of(ROLLOUT, state(step=3, status="complete")) == 100
    short = Rollout(steps=(5, 50), step_s=1, min_requests=1)
    assert weight_of(short, state(step=1, status="complete")) == 100


def test_error_rate_guardrail_rolls_back_with_enough_requests() -> None:
    failing = window(figures(100, errors=3))  # 3 % vs control 0 %: over the 1 point allowed
    verdict = judge(ROLLOUT, state(step=1), failing, now=1001)  # before step_s: still judged
    assert verdict.change is not None
    assert (verdict.change.status, verdict.change.event) == ("rolled_back", "rolled_back")
    assert "error rate" in verdict.reason
    assert weight_of(ROLLOUT, state(step=1, status="rolled_back")) == 0
    paused = ROLLOUT.model_copy(update={"on_failure": "pause"})
    change = judge(paused, state(step=1), failing, now=1001).change
    assert change is not None
    assert change.status == "paused"
    assert weight_of(paused, state(step=1, status="paused")) == 20


def test_slightly_broken_guardrail_waits_for_min_requests() -> None:
    # 2 errors in 50: 4 points over control, under the 5x (5 points) that ends it at once.
    assert judge(ROLLOUT, state(), window(figures(50, errors=2)), now=9999).change is None


def test_severely_broken_guardrail_ends_the_rollout_early() -> None:
    change = judge(ROLLOUT, state(), window(figures(10, errors=10)), now=1000).change
    assert change is not None
    assert change.status == "rolled_back"
    # ...but one failed request is no evidence.
    assert judge(ROLLOUT, state(), window(figures(1, errors=1)), now=1000).change is None


def test_latency_guardrail_compares_p95_with_control() -> None:
    slow = window(figures(100, latency_s=0.040), control=figures(1000, latency_s=0.004))
    verdict = judge(ROLLOUT, state(), slow, now=2000)
    assert verdict.change is not None
    assert verdict.change.status == "rolled_back"
    assert "p95" in verdict.reason
    a_bit_slower = window(figures(100, latency_s=0.0045), control=figures(1000, latency_s=0.004))
    change = judge(ROLLOUT, state(), a_bit_slower, now=2000).change
    assert change is not None
    assert change.event == "step"


def test_nothing_is_judged_unless_progressing() -> None:
    failing = window(figures(500, errors=500))
    for status in ("paused", "rolled_back", "complete"):
        assert judge(ROLLOUT, state(status=status), failing, now=9999).change is None


def test_operator_commands() -> None:
    assert act(ROLLOUT, state(step=2), "pause").status == "paused"
    resumed = act(ROLLOUT, state(step=2, status="paused"), "resume")
    assert (resumed.status, resumed.step, resumed.event) == ("progressing", 2, "resumed")
    again = act(ROLLOUT, state(step=2, status="rolled_back"), "resume")
    assert (again.status, again.step) == ("progressing", 0)  # from the first step
    assert act(ROLLOUT, state(), "promote").status == "complete"
    assert act(ROLLOUT, state(status="complete"), "rollback").status == "rolled_back"
    for status, action in (("paused", "pause"), ("progressing", "resume"), ("complete", "promote")):
        with pytest.raises(ActionRefused):
            act(ROLLOUT, state(status=status), action)  # type: ignore[arg-type]
    with pytest.raises(ActionRefused):
        act(ROLLOUT, state(status="rolled_back"), "rollback")


def _check(tmp_path: Path, experiment: str) -> list[str]:
    (tmp_path / "tenants").mkdir()
    (tmp_path / "endpoints.yaml").write_text(
        "endpoints: {m: {kind: v2, instances: ['http://127.0.0.1:1']}}\n"
    )
    (tmp_path / "tenants" / "acme.yaml").write_text(
        f"endpoint: m\nmodel: a\nexperiment:\n  name: e\n{experiment}"
    )
    return [str(issue) for issue in load_directory(tmp_path)[2]]


CANARY = "  kind: canary\n  variants: [{name: c, model: a, weight: 95}, {name: k, model: b, weight: 5}]\n"


@pytest.mark.parametrize(
    ("rollout", "expected"),
    [
        ("{steps: [5, 50, 100], step_s: 600}", []),
        (
            "{steps: [5, 50, 50], step_s: 1}",
            ["tenants/acme.yaml: experiment.rollout.steps: steps must be strictly increasing "
             "(50 after 50)"],
        ),
        (
            "{steps: [0.5, 50], step_s: 1}",
            ["tenants/acme.yaml: experiment.rollout.steps: each step is a canary weight "
             "within 1-100, not 0.5"],
        ),
        (
            "{steps: [5], step_s: 1, on_failure: retry}",
            ["tenants/acme.yaml: experiment.rollout.on_failure: Input should be 'rollback' "
             "or 'pause'"],
        ),
        ("{steps: [5], step_s: 1, typo: 1}", ["tenants/acme.yaml: experiment.rollout.typo: unknown field"]),
    ],
)  # fmt: skip
def test_rollout_config_errors_name_file_and_field(
    tmp_path: Path, rollout: str, expected: list[str]
) -> None:
    assert _check(tmp_path, f"{CANARY}  rollout: {rollout}\n") == expected


def test_rollout_needs_a_canary_experiment(tmp_path: Path) -> None:
    ab = (
        "  kind: ab\n  variants: [{name: x, model: a, weight: 1}, {name: y, model: b, weight: 1}]\n"
    )
    assert _check(tmp_path, f"{ab}  rollout: {{steps: [5], step_s: 1}}\n") == [
        "tenants/acme.yaml: experiment: a rollout needs a canary experiment (kind: canary), "
        "not kind 'ab'"
    ]
