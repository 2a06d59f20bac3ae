"""Shadow traffic on real models: sent after the caller has its answer, compared, bounded, counted,
and stopped at shutdown. Order is asserted through metrics and a gate, never through timing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from router.keys import BACKENDS
from router.processing import Json
from router.processing.shadow import ShadowPlan
from tenancy.processing import Shadow
from tests.router_fixtures import ConfigDir, RouterFactory, RunningRouter, eventually, v2_body

SETOSA = [[5.1, 3.5, 1.4, 0.2]]
HERE = "tests.test_processing_shadow"
GATE: asyncio.Event | None = None


async def gated_same_answer(primary: Json, shadow: Json) -> bool:
    """A comparator that waits for the test to open the gate: the shadow stays in flight."""
    assert GATE is not None
    await GATE.wait()
    from examples.steps import same_top_class

    return same_top_class(primary, shadow)


@pytest.fixture
def gate() -> Iterator[asyncio.Event]:
    global GATE
    GATE = asyncio.Event()
    try:
        yield GATE
    finally:
        GATE.set()
        GATE = None


def shadow_metric(router: RunningRouter, name: str, tenant: str, **labels: str) -> float:
    return router.metric(f"router_shadow_{name}", tenant=tenant, **labels)


async def wait_for(
    router: RunningRouter, name: str, tenant: str, value: float, **labels: str
) -> None:
    async def reached() -> bool:
        return shadow_metric(router, name, tenant, **labels) == value

    await eventually(reached, within_s=10)


async def test_the_caller_is_answered_while_the_shadow_still_runs(
    mme_config: ConfigDir, start_router: RouterFactory, gate: asyncio.Event
) -> None:
    mme_config.tenant(
        "acme",
        endpoint="mme",
        model="iris-lr",
        shadow={"model": "iris-tree", "percent": 100, "comparator": f"{HERE}:gated_same_answer"},
    )
    mme_config.tenant("alone", endpoint="mme", model="iris-lr")
    router = await start_router(mme_config)
    status, headers, body = await router.invoke("acme", v2_body(SETOSA))
    assert status == 200, body
    assert (headers["X-Model-Id"], headers["X-Variant"]) == ("iris-lr", "default")
    _, _, alone = await router.invoke("alone", v2_body(SETOSA))
    assert orjson.loads(body)["outputs"] == orjson.loads(alone)["outputs"]  # the primary's answer
    # The caller has its answer; the shadow answered too, and its comparison waits on the gate.
    await wait_for(router, "requests_total", "acme", 1, result="ok")
    assert shadow_metric(router, "in_flight", "acme") == 1
    assert shadow_metric(router, "agreement_total", "acme") == 0
    gate.set()
    await wait_for(router, "agreement_total", "acme", 1, result="agree")
    await wait_for(router, "in_flight", "acme", 0)
    assert shadow_metric(router, "duration_seconds_count", "acme") == 1


async def test_a_slow_shadow_cannot_pile_up(
    mme_config: ConfigDir, start_router: RouterFactory, gate: asyncio.Event
) -> None:
    mme_config.tenant(
        "acme",
        endpoint="mme",
        model="iris-lr",
        shadow={
            "model": "iris-tree",
            "percent": 100,
            "max_in_flight": 2,
            "comparator": f"{HERE}:gated_same_answer",
        },
    )
    router = await start_router(mme_config)
    for _ in range(5):
        status, _, body = await router.invoke("acme", v2_body(SETOSA))
        assert status == 200, body
    await wait_for(router, "requests_total", "acme", 3, result="dropped")
    assert shadow_metric(router, "in_flight", "acme") == 2
    gate.set()
    await wait_for(router, "agreement_total", "acme", 2, result="agree")
    await wait_for(router, "in_flight", "acme", 0)


async def test_exact_and_tolerance_agreement(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    proba = [
        {"step": "records_to_v2", "features": ["a", "b", "c", "d"], "outputs": ["predict_proba"]}
    ]
    mme_config.tenant(
        "exact", endpoint="mme", model="iris-lr", shadow={"model": "iris-tree", "percent": 100}
    )
    mme_config.tenant(
        "loose",
        endpoint="mme",
        model="iris-lr",
        preprocess=proba,
        shadow={"model": "iris-knn", "percent": 100, "tolerance": 0.5},
    )
    mme_config.tenant("strict", endpoint="mme", model="iris-lr", preprocess=proba,
                  shadow={"model": "iris-knn", "percent": 100, "tolerance": 0.0001})  # fmt: skip
    router = await start_router(mme_config)
    record = orjson.dumps({"a": 5.1, "b": 3.5, "c": 1.4, "d": 0.2})
    for tenant, body in [("exact", v2_body(SETOSA)), ("loose", record), ("strict", record)]:
        status, _, answer = await router.invoke(tenant, body)
        assert status == 200, answer
    # Setosa: every model says class 0; the probabilities of LR and KNN differ by a few percent.
    await wait_for(router, "agreement_total", "exact", 1, result="agree")
    await wait_for(router, "agreement_total", "loose", 1, result="agree")
    await wait_for(router, "agreement_total", "strict", 1, result="disagree")


async def test_a_failing_shadow_is_counted_and_never_reaches_the_caller(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    mme_config.tenant(
        "acme", endpoint="mme", model="iris-lr", shadow={"model": "no-such-model", "percent": 100}
    )
    router = await start_router(mme_config)
    status, _, body = await router.invoke("acme", v2_body(SETOSA))
    assert status == 200, body
    await wait_for(router, "requests_total", "acme", 1, result="error")
    assert shadow_metric(router, "agreement_total", "acme") == 0


async def test_shutdown_cancels_and_awaits_running_shadows(
    mme_config: ConfigDir, start_router: RouterFactory, gate: asyncio.Event
) -> None:
    mme_config.tenant(
        "acme",
        endpoint="mme",
        model="iris-lr",
        shadow={"model": "iris-tree", "percent": 100, "comparator": f"{HERE}:gated_same_answer"},
    )
    router = await start_router(mme_config)
    assert (await router.invoke("acme", v2_body(SETOSA)))[0] == 200
    await wait_for(router, "in_flight", "acme", 1)
    runner = router.app[BACKENDS].processing.shadows
    await runner.aclose()  # what the app's cleanup does, through BackendFactory.aclose()
    assert runner.in_flight == 0
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("shadow ")] == []
    assert shadow_metric(router, "in_flight", "acme") == 0
    # Closed: later copies are dropped, and the caller still gets its answer.
    assert (await router.invoke("acme", v2_body(SETOSA)))[0] == 200
    await wait_for(router, "requests_total", "acme", 1, result="dropped")


def test_sampling_follows_percent_with_an_injected_rng() -> None:
    values = iter([0.05, 0.10, 0.5, 0.099])
    plan = ShadowPlan(
        "acme", Shadow(model="m", percent=10), default_timeout_s=1.0, rng=lambda: next(values)
    )
    assert [plan.sample() for _ in range(4)] == [True, False, False, True]
