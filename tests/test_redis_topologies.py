"""Router and preloader on Redis Cluster (three masters) and behind Sentinel (SPEC "Scale-out"):
sticky buckets, the global limit, the warm map, the preloader's lock and publishing behave as on one
server, and a Sentinel failover under traffic fails no request."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from preloader.leader import RedisLock, lock_key
from preloader.publish import WarmPublisher
from router.global_rate import GlobalRates
from router.loops import cancel_and_wait
from router.metrics import RouterMetrics
from router.redis_conn import PoolOptions, RedisClient, RedisTarget, close_redis, open_redis
from router.redis_keys import rate_key, traffic_key, warm_flag_key, warm_map_key
from router.traffic import TrafficCounter, recent_traffic
from router.warm_map import WarmMap
from tests.preloader_fixtures import PreloaderFactory, preloader_settings
from tests.router_fixtures import ConfigDir, RouterFactory, RunningRouter, eventually
from tests.scaleout_fixtures import Topology
from tests.support.moto_server import MotoServer, create_mme_endpoint
from tests.support.redis_topologies import RedisSentinelGroup

pytest_plugins = ("tests.preloader_fixtures",)

# Generous: these tests are about topologies, not latency; a loaded test machine must not turn a
# slow answer into a hash decision.
PATIENT_BUDGET_MS = 1000.0
UNITS = [f"user-{i}" for i in range(12)]


@asynccontextmanager
async def client_for(target: RedisTarget) -> AsyncIterator[RedisClient]:
    client = open_redis(target, PoolOptions(max_connections=16, retries=1))
    try:
        yield client
    finally:
        await close_redis(client)


def ab_tenant(cfg: ConfigDir, weights: tuple[int, int], **limits: Any) -> None:
    cfg.tenant(
        "acme",
        endpoint="sm",
        model="m-a.tar.gz",
        limits={"timeout_ms": 20000, **limits},
        experiment={
            "name": "exp",
            "kind": "ab",
            "variants": [
                {"name": "a", "model": "m-a.tar.gz", "weight": weights[0]},
                {"name": "b", "model": "m-b.tar.gz", "weight": weights[1]},
            ],
        },
    )


async def peek(router: RunningRouter, unit: str) -> dict[str, Any]:
    async with router.session.get(
        f"{router.url}/v1/admin/tenants/acme/assignment", params={"unit": unit}
    ) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_sticky_buckets_stay_put_on_the_topology(
    topology: Topology, moto_config: ConfigDir, start_router: RouterFactory
) -> None:
    ab_tenant(moto_config, (50, 50))
    router = await start_router(
        moto_config, redis_budget_ms=PATIENT_BUDGET_MS, **topology.settings()
    )
    first: dict[str, str] = {}
    for unit in UNITS:
        status, headers, body = await router.invoke("acme", unit=unit)
        assert status == 200, body
        first[unit] = headers["X-Variant"]
    assert set(first.values()) == {"a", "b"}
    ab_tenant(moto_config, (99, 1))  # ab: stored units do not move
    await router.reload()
    for unit in UNITS:
        answer = await peek(router, unit)
        assert (answer["variant"], answer["source"]) == (first[unit], "stored"), unit
    assert router.metric("router_redis_errors_total") == 0


async def test_global_limit_on_the_topology(topology: Topology) -> None:
    rps, seconds = 200.0, 3.0
    clients = [open_redis(topology.target, PoolOptions(max_connections=8)) for _ in range(2)]
    fleet = [GlobalRates(c, RouterMetrics(), budget_s=1.0, group="topo") for c in clients]
    beats = [asyncio.create_task(r.run()) for r in fleet]
    try:
        await eventually(lambda: _all_see(fleet, 2))
        gates = [r.bucket("acme", rps, rps / 10) for r in fleet]
        admitted, started, offered = 0, time.monotonic(), 0
        while (elapsed := time.monotonic() - started) < seconds:
            while offered < int(elapsed * rps):  # 2x the rate: each replica offered rps
                offered += 1
                admitted += sum(1 for gate in gates if gate.take())
            await asyncio.sleep(0.002)
        assert abs(admitted / seconds - rps) <= 0.15 * rps, admitted
        async with client_for(topology.target) as client:
            assert await client.exists(rate_key("acme")) == 1
    finally:
        await cancel_and_wait(beats)
        for r, c in zip(fleet, clients, strict=True):
            await r.aclose()
            await close_redis(c)


async def _all_see(fleet: list[GlobalRates], count: int) -> bool:
    return all(r.replicas == count for r in fleet)


async def test_warm_map_and_traffic_on_the_topology(topology: Topology) -> None:
    async with client_for(topology.target) as client:
        # Two endpoints: their keys live in different slots (on Cluster, likely different nodes).
        for endpoint in ("mme-1", "mme-2"):
            publisher = WarmPublisher(client, endpoint)
            await publisher.publish(
                {"http://i1": frozenset({"m1"}), "http://i2": frozenset({"m1", "m2"})},
                all_warm=True,
            )
            await publisher.publish({"http://i2": frozenset({"m2"})}, all_warm=True)
            assert await client.get(warm_flag_key(endpoint)) == b"1"
            assert await client.hkeys(warm_map_key(endpoint)) == [b"http://i2"]
        warm = WarmMap(client)
        warm.track(["mme-1", "mme-2"])
        await warm.refresh()
        assert warm.instances_for("mme-2", "m2") == frozenset({"http://i2"})
        assert warm.instances_for("mme-1", "m1") == frozenset()
        counter = TrafficCounter(client)
        for _ in range(3):
            counter.count("mme-1", "m1")
        counter.count("mme-2", "m2")
        await counter.flush()
        assert await recent_traffic(client, "mme-1") == Counter({"m1": 3})
        assert await recent_traffic(client, "mme-2") == Counter({"m2": 1})
        assert await client.exists(traffic_key("mme-1", int(time.time() // 60))) == 1


async def test_preloader_lock_on_the_topology(topology: Topology) -> None:
    async with client_for(topology.target) as client:
        mine = RedisLock(client, lock_key("mme"), "me", ttl_s=5)
        theirs = RedisLock(client, lock_key("mme"), "them", ttl_s=5)
        assert await mine.acquire()
        assert not await theirs.acquire()
        assert await mine.renew()
        assert not await theirs.renew()
        assert not await theirs.release()
        assert await mine.holder() == "me"
        assert await mine.release()
        assert await theirs.acquire()


async def test_sentinel_failover_under_traffic_fails_no_request(
    redis_sentinel: RedisSentinelGroup, moto_config: ConfigDir, start_router: RouterFactory
) -> None:
    ab_tenant(moto_config, (50, 50), rps=1000)
    router = await start_router(moto_config, redis_url=redis_sentinel.url)
    for unit in UNITS:  # stored on the first master, replicated to the replica
        assert (await router.invoke("acme", unit=unit))[0] == 200
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def traffic() -> None:
        i = 0
        while not stop.is_set():
            status, _, _ = await router.invoke("acme", unit=UNITS[i % len(UNITS)])
            statuses[status] += 1
            i += 1
            await asyncio.sleep(0.01)

    senders = [asyncio.create_task(traffic()) for _ in range(4)]
    try:
        await asyncio.sleep(0.5)
        before = redis_sentinel.master_port()
        after = await asyncio.to_thread(redis_sentinel.failover)
        assert after != before
        await asyncio.sleep(1.0)  # traffic goes on against the new master
    finally:
        stop.set()
        await asyncio.gather(*senders)
    assert set(statuses) == {200}, statuses
    # Stickiness is back on the new master: a new unit is stored there and read back.
    await eventually(lambda: _stored_again(router), within_s=10.0)


async def _stored_again(router: RunningRouter) -> bool:
    unit = f"late-{time.monotonic_ns()}"
    status, _, _ = await router.invoke("acme", unit=unit)
    return status == 200 and (await peek(router, unit))["source"] == "stored"


async def test_preloader_leads_and_publishes_on_the_topology(
    topology: Topology,
    moto_config: ConfigDir,
    moto: MotoServer,
    start_preloader: PreloaderFactory,
) -> None:
    """Two preloaders in cluster mode: one takes the endpoint's lock and warms it (the warm flag
    appears, for the routers' readiness), the other stands by."""
    await create_mme_endpoint(moto.url, "mme-test", 1)
    moto_config.tenant("acme", endpoint="sm", model="m.tar.gz", preload={"sample": {"x": [1]}})
    settings = [
        replace(
            # A lock that outlives a loaded machine's pauses: the test is about the topology.
            preloader_settings(moto_config, topology.target.url, instance_id=name, lock_ttl_s=5.0),
            redis_cluster=topology.target.cluster,
        )
        for name in ("p1", "p2")
    ]
    first = await start_preloader(settings[0])
    async with client_for(topology.target) as client:

        async def warm() -> bool:
            return await client.get(warm_flag_key("sm")) == b"1"

        await eventually(warm, within_s=20)
        second = await start_preloader(settings[1])
        await asyncio.sleep(0.5)
        assert [p.leading("sm") for p in (first, second)] == [True, False]
        holder = await client.get(lock_key("sm"))
        assert holder is not None
        assert b"p1" in holder
