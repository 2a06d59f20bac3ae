"""The preloader on real MLServer instances, with the real router in front and a real Redis between.

What each test proves is in its docstring. No timing is asserted: waits are "eventually, within a
generous bound", and every interval is shortened through the config or the settings.
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from devstack import mlserver as mls
from preloader.engine import SidecarError
from preloader.once import run_once
from preloader.progress import Progress
from router.redis_keys import preloader_lock_key
from router.warm_map import warm_flag_key
from tests.preloader_fixtures import (
    ALL_MODELS,
    DIABETES_ROW,
    IRIS_SAMPLE,
    PreloaderFactory,
    RunningPreloader,
    inferences,
    preloader_settings,
    settle,
    standard_tenants,
    v2_endpoint,
    warm_flag,
    warm_map,
)
from tests.router_fixtures import IRIS_SETOSA, ConfigDir, RouterFactory, eventually, v2_body

pytest_plugins = ("tests.preloader_fixtures",)

REPO = Path(__file__).resolve().parent.parent
MLServerPair = tuple[mls.MLServerInstance, mls.MLServerInstance]

# (tenant, unit, body, the model that unit reaches)
FIRST_REQUESTS = [
    ("acme", None, v2_body([IRIS_SETOSA]), "iris-lr"),
    ("globex", "plain-user", v2_body([IRIS_SETOSA]), "iris-tree"),
    ("globex", "qa-canary", v2_body([IRIS_SETOSA]), "iris-knn"),
    ("initech", None, v2_body([DIABETES_ROW]), "diabetes-lr"),
]


def mme_config(root: Path, urls: list[str], **endpoint: Any) -> ConfigDir:
    cfg = ConfigDir(root)
    cfg.endpoints({"mme": v2_endpoint(urls, **endpoint)})
    standard_tenants(cfg)
    return cfg


async def first_requests_are_warm(router: Any, rounds: int = 4) -> None:
    """Each model a few times (round robin reaches every instance); no request waited on a load."""
    for tenant, unit, body, model in FIRST_REQUESTS:
        for _ in range(rounds):
            status, headers, answer = await router.invoke(tenant, body, unit=unit)
            assert status == 200, answer
            assert headers["X-Model-Id"] == model
    assert router.metric("router_cold_starts_total") == 0
    assert router.metric("router_model_loads_total") == 0


async def test_once_in_process_then_first_requests_cause_no_load(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_router: RouterFactory,
) -> None:
    """``run_once`` (what ``--once`` runs) loads the whole warm set on every instance, prints one
    line per model and instance and a summary, publishes the warm map and flag; then the first
    requests through the router to every model cause no load."""
    cfg = mme_config(tmp_path / "cfg", [m.url for m in fresh_mlservers])
    stream = io.StringIO()
    output = Progress(stream, tty=True)
    result = await run_once(preloader_settings(cfg, preloader_redis_url), progress=output)
    assert result.ok, [f.line() for f in result.failures]
    for instance in fresh_mlservers:
        assert instance.loaded_models() == ALL_MODELS

    lines = stream.getvalue().splitlines()
    warm_lines = [line.split() for line in lines if line.startswith("warm ")]
    assert sorted((w[1], w[2], w[3]) for w in warm_lines) == sorted(
        ("mme", m.url, model) for m in fresh_mlservers for model in ALL_MODELS
    )
    assert all(w[5] == "ms" for w in warm_lines)
    assert lines[-1].startswith("summary endpoint=* models=4/4 instances=2 ")
    assert lines[-1].endswith("failures=0")

    published = await warm_map(redis_client, "mme")
    assert published == {m.url: sorted(ALL_MODELS) for m in fresh_mlservers}
    assert await warm_flag(redis_client, "mme")
    assert 0 < await redis_client.pttl(warm_flag_key("mme")) <= 30_000

    router = await start_router(cfg, redis_url=preloader_redis_url)
    await first_requests_are_warm(router)


async def test_cli_once_exit_codes_and_failure_lines(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    preloader_redis_url: str,
    start_router: RouterFactory,
) -> None:
    """The real ``python -m preloader --config DIR --once``: exit 0 when all is warm (JSON logs
    when not on a terminal) and the router then serves without a load; exit 1 with one
    ``FAILED ...`` line per failure when a model cannot be loaded."""
    cfg = mme_config(tmp_path / "cfg", [m.url for m in fresh_mlservers])

    async def once() -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "preloader", "--config", str(cfg.root), "--once",
            "--redis-url", preloader_redis_url,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await once()
    assert code == 0, (out, err)
    assert out == ""
    logged = [orjson.loads(line)["msg"] for line in err.splitlines()]
    assert sum(msg.startswith("model warm endpoint=mme ") for msg in logged) == 8
    assert logged[-1].startswith("summary endpoint=* models=4/4 instances=2")
    for instance in fresh_mlservers:
        assert instance.loaded_models() == ALL_MODELS
    router = await start_router(cfg, redis_url=preloader_redis_url)
    await first_requests_are_warm(router)

    cfg.tenant("hooli", endpoint="mme", model="no-such-model")
    code, out, err = await once()
    assert code == 1, (out, err)
    failed = [line for line in out.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 2, out
    assert "mme: 4 of 5 models warm on every reachable instance" in out
    for instance in fresh_mlservers:
        prefix = f"FAILED endpoint=mme instance={instance.url} model=no-such-model: load failed"
        assert sum(line.startswith(prefix) for line in failed) == 1, failed


async def test_capacity_and_opt_out(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
) -> None:
    """``max_models: 2`` with three wanted models loads only the two of highest priority; a model
    only opted-out tenants reference is not loaded; one an enabled tenant shares stays."""
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {
            "mme": v2_endpoint(
                [m.url for m in fresh_mlservers],
                capacity={"max_models": 2},
                # Today's behaviour: every instance the same models, up to max_models.
                placement={"mode": "replicate", "headroom": 0},
            )
        }
    )
    cfg.tenant("low", endpoint="mme", model="iris-lr", preload={"priority": 1})
    cfg.tenant("high", endpoint="mme", model="iris-tree", preload={"priority": 10})
    cfg.tenant("mid", endpoint="mme", model="iris-knn", preload={"priority": 5})
    cfg.tenant("out", endpoint="mme", model="diabetes-lr", preload={"enabled": False})
    cfg.tenant("out-too", endpoint="mme", model="iris-tree",
               preload={"enabled": False, "priority": 99})  # fmt: skip

    result = await run_once(
        preloader_settings(cfg, preloader_redis_url), progress=Progress(tty=False)
    )
    assert result.ok, [f.line() for f in result.failures]
    for instance in fresh_mlservers:
        assert instance.loaded_models() == {"iris-tree", "iris-knn"}
    published = await warm_map(redis_client, "mme")
    assert published == {m.url: ["iris-knn", "iris-tree"] for m in fresh_mlservers}


async def test_scale_out_instance_is_warmed_before_it_takes_traffic(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    models_dir: Path,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_router: RouterFactory,
    start_preloader: PreloaderFactory,
) -> None:
    """While traffic runs through the router, a third MLServer is started and added to the URL
    list (both processes reload the file): the preloader warms it, publishes it, the router then
    sends it traffic, and no request anywhere waited on a load."""
    urls = [m.url for m in fresh_mlservers]
    cfg = mme_config(tmp_path / "cfg", urls)
    router = await start_router(cfg, redis_url=preloader_redis_url)
    preloader = await start_preloader(preloader_settings(cfg, preloader_redis_url))
    await eventually(lambda: warm_flag(redis_client, "mme"), within_s=20)

    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            for tenant, unit, body, _ in FIRST_REQUESTS:
                status, _, _ = await router.invoke(tenant, body, unit=unit)
                statuses.append(status)

    workers = [asyncio.create_task(traffic()) for _ in range(2)]
    third = await asyncio.to_thread(mls.start_mlserver, models_dir, tmp_path / "third")
    try:
        warmups = len(ALL_MODELS)  # the preloader's own warm-up inferences
        cfg.endpoints({"mme": v2_endpoint([*urls, third.url])})

        async def third_published() -> bool:
            return sorted(ALL_MODELS) == (await warm_map(redis_client, "mme")).get(third.url)

        await eventually(third_published, within_s=30)
        assert third.loaded_models() == ALL_MODELS
        await eventually(lambda: warm_flag(redis_client, "mme"), within_s=10)

        async def third_serves() -> bool:
            return await asyncio.to_thread(inferences, third) > warmups

        await eventually(third_serves, within_s=15)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await asyncio.to_thread(third.stop)
    assert statuses
    assert set(statuses) == {200}
    assert router.metric("router_cold_starts_total") == 0
    assert router.metric("router_model_loads_total") == 0
    assert f"instance new endpoint=mme instance={third.url}" in preloader.output.getvalue()


async def test_dns_discovery_and_an_instance_restarted_empty_is_rewarmed(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_router: RouterFactory,
    start_preloader: PreloaderFactory,
) -> None:
    """``discovery: {dns: localhost}`` resolves to 127.0.0.1 (this machine's /etc/hosts; MLServer
    listens there): the instance is warmed and published under the URL the router's discovery
    also builds, so the router's first requests are warm. Killed, the instance leaves the warm
    map and /ready turns 503; restarted empty, it is warmed again."""
    instance = fresh_mlservers[0]
    cfg = ConfigDir(tmp_path / "cfg")
    discovery = {"dns": "localhost", "port": instance.http_port, "interval_s": 0.2}
    cfg.endpoints({"mme": {"kind": "v2", "discovery": discovery, "timeout_ms": 1000}})
    standard_tenants(cfg)
    url = f"http://127.0.0.1:{instance.http_port}"
    preloader = await start_preloader(preloader_settings(cfg, preloader_redis_url))

    async def ready() -> bool:
        return (await preloader.ready())[0] == 200

    await eventually(ready, within_s=20)
    assert instance.loaded_models() == ALL_MODELS
    assert await warm_map(redis_client, "mme") == {url: sorted(ALL_MODELS)}
    router = await start_router(cfg, redis_url=preloader_redis_url)
    await first_requests_are_warm(router, rounds=2)

    await asyncio.to_thread(instance.kill)

    async def dropped() -> bool:
        status, body = await preloader.ready()
        return status == 503 and "unreachable" in body["reason"]

    await eventually(dropped, within_s=10)
    assert await warm_map(redis_client, "mme") == {}
    assert not await warm_flag(redis_client, "mme")

    await asyncio.to_thread(instance.restart)
    await eventually(ready, within_s=20)
    assert instance.loaded_models() == ALL_MODELS
    assert await warm_map(redis_client, "mme") == {url: sorted(ALL_MODELS)}
    assert preloader.metric("preloader_models_warm", endpoint="mme") == len(ALL_MODELS)


async def test_sidecar_ready_is_503_until_the_local_instance_is_warm(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_preloader: PreloaderFactory,
) -> None:
    """Sidecar mode warms only its local instance, takes no lock, writes nothing to Redis, and
    its /ready answers 503 (with the reason) until the warm set is loaded there, then 200."""
    local, other = fresh_mlservers
    cfg = mme_config(tmp_path / "cfg", [m.url for m in fresh_mlservers], timeout_ms=300)
    local.pause()  # a pod whose server is not answering yet
    try:
        preloader = await start_preloader(
            preloader_settings(cfg, preloader_redis_url, sidecar_url=local.url)
        )
        for _ in range(3):
            status, body = await preloader.ready()
            assert status == 503, body
            assert body["mode"] == "sidecar"
            assert local.url in body["reason"]
            await settle(0.2)
    finally:
        local.resume()

    async def ready() -> bool:
        return (await preloader.ready())[0] == 200

    await eventually(ready, within_s=60)
    assert local.loaded_models() == ALL_MODELS
    assert other.loaded_models() == set()
    assert await redis_client.keys("*") == []


def test_sidecar_needs_a_clear_v2_endpoint(tmp_path: Path) -> None:
    """With several v2 endpoints ``--sidecar`` needs ``--endpoint``; a sagemaker one is refused."""
    from preloader.app import create_app

    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {
            "one": v2_endpoint(["http://127.0.0.1:9"]),
            "two": v2_endpoint(["http://127.0.0.1:9"]),
            "sm": {"kind": "sagemaker", "endpoint_name": "x", "region": "us-east-1"},
        }
    )
    settings = preloader_settings(cfg, "redis://127.0.0.1:9/0", sidecar_url="http://127.0.0.1:9")
    with pytest.raises(SidecarError, match="name one with --endpoint"):
        create_app(settings)
    with pytest.raises(SidecarError, match="not a v2 endpoint"):
        create_app(preloader_settings(cfg, "redis://127.0.0.1:9/0", sidecar_url="x", endpoint="sm"))
    create_app(preloader_settings(cfg, "redis://127.0.0.1:9/0", sidecar_url="x", endpoint="two"))


async def test_leader_failover(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_preloader: PreloaderFactory,
) -> None:
    """Cluster mode: while a crashed holder's lock has not expired nobody warms; once it expires
    one preloader leads and warms; a second one stands by (and is ready: it leads nothing); when
    the leader stops, the standby takes over within the lock TTL and keeps the endpoint warm."""
    cfg = mme_config(tmp_path / "cfg", [m.url for m in fresh_mlservers])
    lock = preloader_lock_key("mme")
    await redis_client.set(lock, "crashed-holder", px=1000)  # a leader that died a moment ago
    first = await start_preloader(preloader_settings(cfg, preloader_redis_url, instance_id="p1"))
    await settle(0.2)
    assert not first.leading("mme")
    assert all(m.loaded_models() == set() for m in fresh_mlservers)

    await eventually(lambda: _leads(first), within_s=5)
    await eventually(lambda: warm_flag(redis_client, "mme"), within_s=20)
    assert await redis_client.get(lock) == b"p1"

    second = await start_preloader(preloader_settings(cfg, preloader_redis_url, instance_id="p2"))

    async def standing_by() -> bool:
        status, body = await second.ready()
        return status == 200 and body["endpoints"]["mme"]["leading"] is False

    await eventually(standing_by, within_s=5)
    assert second.metric("preloader_leader", endpoint="mme") == 0

    await first.stop()
    await eventually(lambda: _leads(second), within_s=2)
    assert await redis_client.get(lock) == b"p2"
    # The new leader does the work: a model evicted from an instance comes back.
    fresh_mlservers[1].unload("iris-knn")

    async def rewarmed() -> bool:
        return "iris-knn" in fresh_mlservers[1].loaded_models()

    await eventually(rewarmed, within_s=10)


async def _leads(preloader: RunningPreloader) -> bool:
    return preloader.leading("mme")


async def test_config_changes_are_warmed_without_restart(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_preloader: PreloaderFactory,
) -> None:
    """A new canary model and a new tenant are loaded everywhere once their files change."""
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": v2_endpoint([m.url for m in fresh_mlservers])})
    cfg.tenant("acme", endpoint="mme", model="iris-lr", preload={"sample": IRIS_SAMPLE})
    preloader = await start_preloader(preloader_settings(cfg, preloader_redis_url))
    await eventually(lambda: warm_flag(redis_client, "mme"), within_s=20)
    assert all(m.loaded_models() == {"iris-lr"} for m in fresh_mlservers)

    cfg.tenant(
        "acme",
        endpoint="mme",
        model="iris-lr",
        experiment={
            "name": "lr-vs-knn",
            "kind": "canary",
            "variants": [
                {"name": "control", "model": "iris-lr", "weight": 95},
                {"name": "canary", "model": "iris-knn", "weight": 5},
            ],
        },
        preload={"sample": IRIS_SAMPLE},
    )
    cfg.tenant("newco", endpoint="mme", model="iris-tree")
    wanted = ["iris-knn", "iris-lr", "iris-tree"]

    async def everywhere() -> bool:
        published = await warm_map(redis_client, "mme")
        return all(published.get(m.url) == wanted for m in fresh_mlservers)

    await eventually(everywhere, within_s=10)
    assert all(m.loaded_models() == set(wanted) for m in fresh_mlservers)
    assert preloader.metric("preloader_models_warm", endpoint="mme") == 3
    assert preloader.metric("preloader_warm_failures_total", endpoint="mme") == 0
    # One load+warm-up per model and instance: iris-lr first, then the two new ones.
    assert preloader.metric("preloader_warm_duration_seconds_count", endpoint="mme") == 6
