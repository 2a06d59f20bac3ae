"""Global tenant rate (SPEC "Scale-out"): replicas sharing one Redis hold the tenant's rate together.

The replica-count cases drive ``GlobalRates`` directly (one Redis client per replica, as separate
processes would have) so 1, 2 and 5 replicas run side by side in one 5-s window; the router cases
run three real routers (``create_app`` on real ports) and a Redis that dies.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from devstack.redis_server import RedisServer
from router.global_rate import GlobalRates, SharedRate
from router.keys import RATES
from router.loops import cancel_and_wait
from router.metrics import RouterMetrics
from router.redis_conn import close_redis
from tests.router_fixtures import ConfigDir, RouterFactory, RunningRouter, eventually

WINDOW_S = 5.0


async def offer(take: list[SharedRate], per_replica_rps: float, seconds: float) -> int:
    """Call ``take`` on each replica at a steady pace; returns how many were admitted."""
    admitted = 0
    started = time.monotonic()
    offered = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * per_replica_rps) + 1
        while offered < due:
            offered += 1
            admitted += sum(1 for gate in take if gate.take())
        await asyncio.sleep(0.002)
    return admitted


@asynccontextmanager
async def replicas(redis_url: str, count: int, group: str) -> AsyncIterator[list[GlobalRates]]:
    fleet = [
        GlobalRates(aioredis.Redis.from_url(redis_url), RouterMetrics(), group=group)
        for _ in range(count)
    ]
    beats = [asyncio.create_task(r.run()) for r in fleet]
    try:
        yield fleet
    finally:
        await cancel_and_wait(beats)
        for r in fleet:
            await r.aclose()
            await close_redis(r.redis)


async def admitted_with(redis_url: str, count: int, rps: float) -> tuple[int, int]:
    """(admitted in WINDOW_S, replica count seen) for ``count`` replicas offered 2x ``rps``."""
    async with replicas(redis_url, count, group=f"g{count}") as fleet:
        await eventually(lambda: _all_see(fleet, count))
        gates = [r.bucket(f"tenant-{count}", rps, rps / 10) for r in fleet]
        admitted = await offer(gates, 2 * rps / count, WINDOW_S)
        return admitted, min(r.replicas for r in fleet)


async def _all_see(fleet: list[GlobalRates], count: int) -> bool:
    return all(r.replicas == count for r in fleet)


async def test_admitted_rate_is_the_tenants_rps_with_1_2_or_5_replicas(redis_url: str) -> None:
    rps = 200.0
    results = await asyncio.gather(*(admitted_with(redis_url, n, rps) for n in (1, 2, 5)))
    for n, (admitted, seen) in zip((1, 2, 5), results, strict=True):
        assert seen == n
        rate = admitted / WINDOW_S
        assert abs(rate - rps) <= 0.15 * rps, f"{n} replicas admitted {rate:.1f}/s for {rps}/s"


async def paced(
    routers: list[RunningRouter], tenant: str, per_router_rps: float, seconds: float
) -> tuple[Counter[int], float]:
    """Send to every router at a steady pace (not waiting for answers): (status -> count, seconds
    until the last request was sent). Admission is decided on arrival, before the upstream, so the
    sending span is the admission window (answers of admitted requests may come later)."""
    calls: list[asyncio.Task[tuple[int, object, bytes]]] = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        while len(calls) < (int(elapsed * per_router_rps) + 1) * len(routers):
            for router in routers:
                calls.append(asyncio.create_task(router.invoke(tenant)))
        await asyncio.sleep(0.005)
    span = time.monotonic() - started
    answers = await asyncio.gather(*calls)
    for status, headers, _ in answers:
        if status == 429:
            assert int(str(headers["Retry-After"])) >= 1  # type: ignore[index]
    return Counter(status for status, _, _ in answers), span


def rates_of(router: RunningRouter) -> GlobalRates:
    return router.app[RATES]


async def test_three_routers_sharing_one_redis_hold_the_tenants_rate(
    moto_config: ConfigDir, start_router: RouterFactory
) -> None:
    rps = 30
    moto_config.tenant(
        "acme",
        endpoint="sm",
        model="m.tar.gz",
        limits={"rps": rps, "burst": 9, "timeout_ms": 20000},
    )
    # A patient budget: on a loaded test machine a slow refill would switch a router to its local
    # share for a moment (tested below); this test is about the shared bucket.
    routers = [await start_router(moto_config, redis_budget_ms=250.0) for _ in range(3)]
    await eventually(lambda: _all_see([rates_of(r) for r in routers], 3))
    for router in routers:  # each opens its SageMaker client (slow once) before the window
        assert (await router.invoke("acme"))[0] == 200
    answers, span = await paced(routers, "acme", per_router_rps=2 * rps / 3, seconds=WINDOW_S)
    assert set(answers) <= {200, 429}, answers
    rate = answers[200] / span
    assert abs(rate - rps) <= 0.15 * rps, f"admitted {rate:.1f}/s across 3 routers for {rps}/s"


async def test_with_redis_down_each_router_admits_its_share(
    own_redis: RedisServer, moto_config: ConfigDir, start_router: RouterFactory
) -> None:
    rps = 40
    moto_config.tenant(
        "acme",
        endpoint="sm",
        model="m.tar.gz",
        limits={"rps": rps, "burst": 4, "timeout_ms": 20000},
    )
    first, second = [await start_router(moto_config, redis_url=own_redis.url) for _ in range(2)]
    await eventually(lambda: _all_see([rates_of(first), rates_of(second)], 2))
    assert (await first.invoke("acme"))[0] == 200
    own_redis.kill()
    answers, span = await paced([first], "acme", per_router_rps=rps, seconds=4.0)
    assert set(answers) <= {200, 429}, answers
    rate = answers[200] / span
    share = rps / 2
    assert abs(rate - share) <= 0.15 * share, f"admitted {rate:.1f}/s alone for a share of {share}"
    assert first.metric("router_redis_errors_total") > 0
    assert rates_of(first).replicas == 2  # the last count seen stands


async def test_a_quiet_tenant_keeps_its_credit_when_redis_goes_away() -> None:
    """The fall-back bucket starts with what the replica could still admit (its stock down to the
    credit floor), not empty: a Redis that vanishes (or a breaker opened by another tenant's slow
    refills) must not refuse a quiet tenant far below its rate."""
    now = 100.0
    redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens: refused at once
    rates = GlobalRates(redis, RouterMetrics(), clock=lambda: now)
    gate = rates.bucket("quiet", 2000, 2000)
    try:
        assert gate.take()  # on credit; the refill it starts fails

        async def fell_back() -> bool:
            return gate.fallback is not None

        await eventually(fell_back)
        # The same instant: no time has refilled anything, only the credit can admit these.
        assert sum(gate.take() for _ in range(50)) == 50
    finally:
        await rates.aclose()
        await close_redis(redis)
