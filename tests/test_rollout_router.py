"""Progressive rollout through two router replicas sharing a real Redis, over real MLServer.

Short steps (step_s 1, min_requests 5) and a rollout tick of 0.2 s keep each test to seconds; the
assertions are on what callers and operators see (X-Variant, the admin answer, the metrics), never
on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from devstack.redis_server import RedisServer
from router.rollout.apply import plan_at
from tenancy.models import Experiment
from tests.conftest import MLServerPair
from tests.router_fixtures import ConfigDir, RouterFactory, RunningRouter, eventually

TOKEN = "adm1n"
UNITS = [f"user-{i}" for i in range(100)]
# Lenient guardrails: a loaded 2-core test machine has slow and failed answers of its own; a canary
# failing every request still breaks them by far.
FAST = {
    "steps": [10, 50, 100],
    "step_s": 1,
    "min_requests": 5,
    "max_error_rate_increase": 0.2,
    "max_latency_ratio": 50,
}


def experiment(canary_model: str = "iris-tree", **rollout: Any) -> dict[str, Any]:
    return {
        "name": "tree-v2",
        "kind": "canary",
        "salt": "2026-11",
        "variants": [
            {"name": "control", "model": "iris-lr", "weight": 90},
            {"name": "canary", "model": canary_model, "weight": 10},
        ],
        "rollout": {**FAST, **rollout},
    }


def write_tenant(config: ConfigDir, canary_model: str = "iris-tree", **rollout: Any) -> None:
    config.tenant(
        "acme",
        endpoint="mme",
        model="iris-lr",
        limits={"timeout_ms": 20000},  # a loaded 2-core machine; the tests are not about time
        experiment=experiment(canary_model, **rollout),
    )


@pytest.fixture
def config(mme_config: ConfigDir, fresh_mlservers: MLServerPair) -> ConfigDir:
    # Warm every model the tests use, so no request waits for a load.
    for instance in fresh_mlservers:
        for model in ("iris-lr", "iris-tree", "diabetes-lr"):
            instance.load(model)
    mme_config.endpoints(
        {"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers], "timeout_ms": 20000}}
    )
    write_tenant(mme_config)
    return mme_config


async def start_pair(
    start_router: RouterFactory, config: ConfigDir, **settings: Any
) -> tuple[RunningRouter, RunningRouter]:
    common = {"admin_token": TOKEN, "rollout_interval_s": 0.2, "redis_budget_ms": 500, **settings}
    return await start_router(config, **common), await start_router(config, **common)


async def admin(
    router: RunningRouter, action: str | None = None, *, token: str | None = TOKEN
) -> tuple[int, dict[str, Any]]:
    url = f"{router.url}/v1/admin/tenants/acme/rollout"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if action is None:
        call = router.session.get(url, headers=headers)
    else:
        call = router.session.post(f"{url}/{action}", headers=headers)
    async with call as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def state(router: RunningRouter) -> dict[str, Any]:
    status, body = await admin(router)
    assert status == 200, body
    return body


@contextlib.asynccontextmanager
async def traffic(routers: Sequence[RunningRouter]) -> AsyncIterator[list[int]]:
    """Requests from every unit, spread over the replicas, until the block ends; yields the
    statuses seen (every answer must be a status, never a failure of the router itself)."""
    seen: list[int] = []
    stop = asyncio.Event()

    async def worker(index: int) -> None:
        i = index
        while not stop.is_set():
            router = routers[i % len(routers)]
            status, _, _ = await router.invoke("acme", unit=UNITS[i % len(UNITS)])
            seen.append(status)
            i += 7

    workers = [asyncio.create_task(worker(i)) for i in range(6)]
    try:
        yield seen
    finally:
        stop.set()
        await asyncio.gather(*workers)


async def variants(router: RunningRouter) -> list[str]:
    answers = await asyncio.gather(*(router.invoke("acme", unit=u) for u in UNITS))
    return [headers["X-Variant"] for _, headers, _ in answers]


def expected_at(weight: float) -> list[str]:
    """Each unit's variant at canary ``weight`` by rule 3: canary exactly below the share."""
    plan = plan_at("acme", Experiment.model_validate(experiment()), weight)
    return [plan.by_hash(u).name for u in UNITS]


def weights(*routers: RunningRouter) -> list[float]:
    return [r.metric("router_rollout_weight", tenant="acme") for r in routers]


async def both_at(routers: Sequence[RunningRouter], weight: float) -> None:
    async def check() -> bool:
        return weights(*routers) == [weight] * len(routers)

    await eventually(check, within_s=2.0)  # the contract: every replica within 2 s


def events(routers: Sequence[RunningRouter], event: str) -> float:
    return sum(r.metric("router_rollout_events_total", tenant="acme", event=event) for r in routers)


async def test_healthy_canary_walks_its_steps_to_complete(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    one, two = await start_pair(start_router, config)
    await both_at((one, two), 10)
    seen_weights: list[float] = []
    async with traffic((one, two)) as statuses:

        async def complete() -> bool:
            body = await state(one)
            if not seen_weights or seen_weights[-1] != body["stored_weight"]:
                seen_weights.append(body["stored_weight"])
            return bool(body["status"] == "complete")

        await eventually(complete, within_s=60)
    assert seen_weights == [10, 50, 100]
    assert set(statuses) == {200}
    # Two replicas judged every window; exactly one took each step.
    assert (events((one, two), "step"), events((one, two), "complete")) == (2, 1)
    await both_at((one, two), 100)
    assert await variants(one) == await variants(two) == ["canary"] * len(UNITS)
    # A replica started now resumes at the rollout's weight, not the file's.
    three = await start_router(config, rollout_interval_s=0.2)
    assert weights(three) == [100]
    assert (await three.invoke("acme", unit="user-1"))[1]["X-Variant"] == "canary"


async def test_failing_canary_rolls_back_before_its_second_step(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    # diabetes-lr wants 10 features: every iris request to the canary fails upstream (502).
    write_tenant(config, canary_model="diabetes-lr")
    one, two = await start_pair(start_router, config)
    await both_at((one, two), 10)
    async with traffic((one, two)) as statuses:

        async def rolled_back() -> bool:
            return bool((await state(one))["status"] == "rolled_back")

        await eventually(rolled_back, within_s=30)
    assert 502 in statuses
    body = await state(two)
    assert (body["step"], body["stored_weight"]) == (1, 0)  # never reached the second step
    assert "error rate" in body["reason"]
    assert (events((one, two), "step"), events((one, two), "rolled_back")) == (0, 1)
    await both_at((one, two), 0)
    # Every unit back to control at once, on both replicas; and no more failures.
    for router in (one, two):
        answers = await asyncio.gather(*(router.invoke("acme", unit=u) for u in UNITS))
        assert {(s, h["X-Variant"]) for s, h, _ in answers} == {(200, "control")}


async def test_stickiness_holds_across_steps_and_pause_resume(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    one, two = await start_pair(start_router, config)
    await both_at((one, two), 10)
    assert (await admin(one, "pause"))[0] == 200  # hold the weight while we look
    before = await variants(one)
    assert before == await variants(two) == expected_at(10)
    assert (await admin(two, "resume"))[0] == 200
    for weight in (50, 100):
        async with traffic((one, two)):

            async def stepped(weight: float = weight) -> bool:
                return bool((await state(one))["stored_weight"] == weight)

            await eventually(stepped, within_s=30)
        status, body = await admin(two, "pause")  # hold the weight while we look
        assert (status, body["status"]) == (200, "paused")
        await both_at((one, two), weight)
        after = await variants(one)
        assert after == await variants(two) == expected_at(weight)
        # Raising the weight only moved units from control into canary.
        assert all(a == "canary" for b, a in zip(before, after, strict=True) if b == "canary")
        before = after
        status, body = await admin(one, "resume")
        assert (status, body["status"]) == (200, "progressing")
    assert events((one, two), "paused") == events((one, two), "resumed") == 3


async def test_operator_commands(config: ConfigDir, start_router: RouterFactory) -> None:
    # Nothing moves on its own in this test: no step, and guardrails that cannot break.
    write_tenant(config, step_s=600, max_error_rate_increase=1, max_latency_ratio=1000)
    one, two = await start_pair(start_router, config)
    await both_at((one, two), 10)
    assert (await admin(one, token=None))[0] == 401
    assert (await admin(one, "pause", token="wrong"))[0] == 401
    assert (await admin(one, "jump"))[0] == 400
    assert (await admin(one, "resume"))[0] == 409  # progressing: nothing to resume
    for router in (one, two):
        await router.invoke("acme", unit="user-1")
    async with traffic((one, two)):

        async def counted() -> bool:
            figures = (await state(one))["figures"]
            return bool(figures["control"]["requests"] > 0 and figures["canary"]["requests"] > 0)

        await eventually(counted, within_s=5)
    body = await state(two)
    assert body["status"] == "progressing"
    assert body["figures"]["canary"]["p95_ms"] is not None
    assert set(body["guardrails"]) == {"error_rate_increase", "latency_ratio", "broken"}

    status, body = await admin(one, "promote")
    assert (status, body["status"], body["stored_weight"]) == (200, "complete", 100)
    await both_at((one, two), 100)
    assert await variants(two) == ["canary"] * len(UNITS)

    status, body = await admin(two, "rollback")
    assert (status, body["status"], body["stored_weight"]) == (200, "rolled_back", 0)
    await both_at((one, two), 0)
    assert await variants(one) == ["control"] * len(UNITS)
    assert (await admin(one, "rollback"))[0] == 409

    status, body = await admin(one, "resume")  # re-opens at the first step, rule 3
    assert (status, body["status"], body["stored_weight"]) == (200, "progressing", 10)
    await both_at((one, two), 10)
    assert await variants(two) == expected_at(10)  # exactly the units below 10 %, not all
    assert events((one, two), "complete") == events((one, two), "rolled_back") == 1


async def test_redis_paused_mid_rollout_holds_the_weight_and_fails_nothing(
    config: ConfigDir, start_router: RouterFactory, own_redis: RedisServer
) -> None:
    one, two = await start_pair(
        start_router, config, redis_url=f"{own_redis.url}/0", redis_budget_ms=20
    )
    await both_at((one, two), 10)
    own_redis.pause()
    try:
        async with traffic((one, two)) as statuses:
            await asyncio.sleep(2.5)  # longer than a step: nothing may be judged meanwhile
        assert statuses
        assert set(statuses) == {200}
        assert weights(one, two) == [10, 10]
        assert (await admin(one))[0] == 503
    finally:
        own_redis.resume()
    async with traffic((one, two)):

        async def stepped() -> bool:
            status, body = await admin(one)  # 503 until the pool reconnects
            return status == 200 and body["stored_weight"] == 50

        await eventually(stepped, within_s=30)  # judged again once Redis is back
    await both_at((one, two), 50)


async def test_a_changed_rollout_block_starts_over(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    one, two = await start_pair(start_router, config)
    async with traffic((one, two)):

        async def stepped() -> bool:
            return bool((await state(one))["stored_weight"] == 50)

        await eventually(stepped, within_s=30)
    await admin(one, "pause")
    write_tenant(config, steps=[20, 60, 100], step_s=600)
    for router in (one, two):
        await router.reload(TOKEN)
    await both_at((one, two), 20)

    async def restarted() -> bool:
        return bool((await state(two))["status"] != "starting")

    await eventually(restarted, within_s=2)
    body = await state(two)
    assert (body["status"], body["step"], body["stored_weight"]) == ("progressing", 1, 20)
    assert "changed" in body["reason"]
    assert await variants(one) == await variants(two)
