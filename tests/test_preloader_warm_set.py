"""The warm set's rules and the leader lock's semantics, against a real Redis (no MLServer needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from preloader.leader import Leadership, RedisLock
from preloader.settings import parse_settings
from preloader.warm_set import WarmModel, WarmSets, build_warm_set, encode_sample, fit_capacity
from router.redis_keys import preloader_lock_key
from router.traffic import TrafficCounter
from tenancy.models import Capacity, Endpoint, Preload, Tenant, V2Endpoint
from tenancy.snapshot import Snapshot
from tests.preloader_fixtures import IRIS_SAMPLE
from tests.router_fixtures import eventually

pytest_plugins = ("tests.preloader_fixtures",)


def snapshot(tenants: Mapping[str, Tenant], capacity: Capacity | None = None) -> Snapshot:
    endpoint = V2Endpoint(
        kind="v2", instances=("http://127.0.0.1:9",), capacity=capacity or Capacity()
    )
    endpoints: dict[str, Endpoint] = {"mme": endpoint}
    return Snapshot.build(endpoints, tenants, generation=1)


def tenant(model: str, *, canary: str | None = None, **preload: Any) -> Tenant:
    experiment = None
    if canary is not None:
        experiment = {
            "name": "e",
            "kind": "canary",
            "variants": [
                {"name": "control", "model": model, "weight": 90},
                {"name": "canary", "model": canary, "weight": 10},
            ],
        }
    return Tenant.model_validate(
        {"endpoint": "mme", "model": model, "experiment": experiment, "preload": preload}
    )


def test_every_referenced_model_ordered_by_priority_then_traffic_then_name() -> None:
    snap = snapshot(
        {
            "a": tenant("m-low", priority=1),
            "b": tenant("m-high", canary="m-high-canary", priority=9),
            "c": tenant("m-mid-quiet", priority=5),
            "d": tenant("m-mid-busy", priority=5),
            "e": tenant("m-mid-also-quiet", priority=5),
            "f": tenant("m-low", priority=7),  # shared: the highest priority counts
        }
    )
    warm = build_warm_set(snap, "mme", {"m-mid-busy": 40, "m-low": 1000})
    assert [m.name for m in warm.models] == [
        "m-high",
        "m-high-canary",
        "m-low",  # priority 7 through tenant f
        "m-mid-busy",
        "m-mid-also-quiet",
        "m-mid-quiet",
    ]
    assert warm.models[2].tenants == ("a", "f")


def test_shadow_and_fallback_models_are_warmed_too() -> None:
    config = {
        "endpoint": "mme",
        "model": "primary",
        "shadow": {"model": "shadowed", "percent": 5},
        "fallback": {"model": "backup"},
    }
    snap = snapshot({"a": Tenant.model_validate(config)})
    assert [m.name for m in build_warm_set(snap, "mme").models] == ["backup", "primary", "shadowed"]


def test_opt_out_drops_only_models_no_enabled_tenant_wants() -> None:
    snap = snapshot(
        {
            "in": tenant("shared", priority=1),
            "out": tenant("shared", canary="only-out", enabled=False, priority=50),
        }
    )
    warm = build_warm_set(snap, "mme")
    assert [m.name for m in warm.models] == ["shared"]
    assert warm.models[0].priority == 1  # an opted-out tenant's priority does not count
    assert warm.opted_out == ("only-out",)


def test_capacity_in_models_and_bytes() -> None:
    models = [
        WarmModel("big", 9, size_bytes=600),
        WarmModel("unknown", 8),
        WarmModel("small", 7, size_bytes=300),
        WarmModel("tiny", 6, size_bytes=100),
    ]
    fits, over = fit_capacity(models, Capacity(max_bytes=1000))
    # "unknown" is charged the largest known size (600): it does not fit after "big"; the smaller
    # later ones still do (greedy, in order).
    assert [m.name for m in fits] == ["big", "small", "tiny"]
    assert [m.name for m in over] == ["unknown"]
    fits, over = fit_capacity(models, Capacity(max_models=2, max_bytes=1000))
    assert [m.name for m in fits] == ["big", "small"]
    # No size known at all: the byte cap cannot apply, only max_models does.
    sizeless = [WarmModel(n, 1) for n in ("x", "y", "z")]
    fits, _ = fit_capacity(sizeless, Capacity(max_models=2, max_bytes=1))
    assert [m.name for m in fits] == ["x", "y"]


def test_sample_is_the_first_enabled_tenants_with_its_content_type() -> None:
    snap = snapshot(
        {
            "a-no-sample": tenant("m"),
            "b-csv": tenant("m", sample="5.1,3.5,1.4,0.2", content_type="text/csv"),
            "c-json": tenant("m", sample=IRIS_SAMPLE),
        }
    )
    [model] = build_warm_set(snap, "mme").models
    assert model.sample == b"5.1,3.5,1.4,0.2"
    assert model.content_type == "text/csv"
    assert encode_sample(IRIS_SAMPLE, "application/json") == orjson.dumps(IRIS_SAMPLE)
    assert encode_sample("text", "application/json") == b'"text"'
    assert encode_sample(None, "application/json") is None
    assert Preload().sample is None


async def test_recent_traffic_from_the_routers_counters(redis_client: aioredis.Redis) -> None:
    """The order uses what the router's TrafficCounter wrote to Redis; when Redis is unreachable the
    warm set still builds (priority and name order)."""
    counter = TrafficCounter(redis_client)
    for _ in range(5):
        counter.count("mme", "b-busy")
    counter.count("mme", "a-quiet")
    await counter.flush()
    snap = snapshot({"t1": tenant("a-quiet"), "t2": tenant("b-busy"), "t3": tenant("c-none")})
    warm = await WarmSets(lambda: snap, redis_client).get("mme")
    assert [(m.name, m.traffic) for m in warm.models] == [
        ("b-busy", 5),
        ("a-quiet", 1),
        ("c-none", 0),
    ]
    dead = aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    try:
        warm = await WarmSets(lambda: snap, dead).get("mme")
    finally:
        await dead.aclose()
    assert [m.name for m in warm.models] == ["a-quiet", "b-busy", "c-none"]


async def test_lock_only_its_holder_renews_or_releases(redis_client: aioredis.Redis) -> None:
    mine = RedisLock(redis_client, preloader_lock_key("x"), "me", ttl_s=5)
    theirs = RedisLock(redis_client, preloader_lock_key("x"), "them", ttl_s=5)
    assert await mine.acquire()
    assert not await theirs.acquire()
    assert not await theirs.renew()
    assert not await theirs.release()
    assert await mine.holder() == "me"
    await redis_client.pexpire(preloader_lock_key("x"), 100)
    assert await mine.renew()
    assert await redis_client.pttl(preloader_lock_key("x")) > 1000
    assert await mine.release()
    assert await theirs.acquire()
    assert await mine.holder() == "them"


async def test_a_leader_that_loses_its_lock_stops_working(redis_client: aioredis.Redis) -> None:
    """Another process took the lock (ours expired while we were stalled): the work is cancelled
    at the next renewal, and leadership is retried later."""
    working = asyncio.Event()
    stopped = asyncio.Event()

    async def work() -> None:
        working.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    lock = RedisLock(redis_client, preloader_lock_key("y"), "me", ttl_s=0.6)
    leadership = Leadership(lock, work, ttl_s=0.6)
    task = asyncio.create_task(leadership.run())
    try:
        await asyncio.wait_for(working.wait(), 5)
        assert leadership.leading
        await redis_client.set(preloader_lock_key("y"), "thief", px=60_000)
        await asyncio.wait_for(stopped.wait(), 5)

        async def not_leading() -> bool:
            return not leadership.leading

        await eventually(not_leading, within_s=2)
        assert await redis_client.get(preloader_lock_key("y")) == b"thief"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_settings_from_flags_and_environment() -> None:
    env = {"WARMROUTE_CONFIG": "/cfg", "WARMROUTE_REDIS_URL": "redis://r:1/2",
           "WARMROUTE_PRELOADER_PORT": "9191"}  # fmt: skip
    settings = parse_settings([], env)
    assert (str(settings.config_dir), settings.redis_url, settings.port) == (
        "/cfg",
        "redis://r:1/2",
        9191,
    )
    assert not settings.once
    assert settings.sidecar_url is None
    settings = parse_settings(
        ["--config", "/other", "--once", "--sidecar", "http://127.0.0.1:8080/", "--endpoint", "e"],
        env,
    )
    assert (str(settings.config_dir), settings.once) == ("/other", True)
    assert (settings.sidecar_url, settings.endpoint) == ("http://127.0.0.1:8080", "e")
    assert parse_settings(["--config", "c"], {}).redis_url == "redis://127.0.0.1:6379/0"
    assert parse_settings(["--config", "c"], {}).port == 9090
    with pytest.raises(SystemExit):
        parse_settings([], {})
    with pytest.raises(SystemExit):
        parse_settings(["--config", "c", "--endpoint", "e"], {})
