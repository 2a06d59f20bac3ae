"""The preloader under faults: a model that cannot load, Redis down or slow, long keep-warm passes.

Real MLServer, real Redis servers of the test's own (killed and restarted, or behind a delaying
proxy), real moto and the SageMaker front. No timing is asserted; waits are "eventually".
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from devstack.redis_server import RedisServer
from faults.delay_proxy import DelayProxy
from preloader.engine import Preloader
from preloader.leader import Leadership, RedisLock
from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress
from preloader.resources import http_session, redis_client, sagemaker_clients
from preloader.sagemaker_warmer import SageMakerWarmer
from tests.conftest import MLServerPair
from tests.preloader_fixtures import (
    IRIS_SAMPLE,
    PreloaderFactory,
    preloader_settings,
    v2_endpoint,
    warm_flag,
)
from tests.router_fixtures import ConfigDir, eventually
from tests.support.moto_server import MotoServer, create_mme_endpoint
from tests.support.sagemaker_front import SageMakerFront
from tests.test_preloader_sagemaker import ENDPOINT_NAME, MODELS, AwsUrls, sagemaker_config

pytest_plugins = ("tests.preloader_fixtures",)


def one_tenant(root: Path, urls: list[str]) -> ConfigDir:
    """One tenant, one model (each load is slow on a busy machine: keep the warm set small)."""
    cfg = ConfigDir(root)
    cfg.endpoints({"mme": v2_endpoint(urls)})
    cfg.tenant("acme", endpoint="mme", model="iris-lr", preload={"sample": IRIS_SAMPLE})
    return cfg


def config_with_a_typo(root: Path, urls: list[str]) -> ConfigDir:
    """Plus a tenant whose model does not exist in the repository."""
    cfg = one_tenant(root, urls)
    cfg.tenant("typo", endpoint="mme", model="iris-lr-typo", preload={"priority": 1})
    return cfg


async def test_a_model_that_cannot_load_is_reported_not_waited_for(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_preloader: PreloaderFactory,
) -> None:
    """One tenant's missing model: after 3 failed loads the sidecar's /ready turns 200 and lists
    it, the failures are counted and logged, and in cluster mode the warm flag is set."""
    local = fresh_mlservers[0]
    cfg = config_with_a_typo(tmp_path / "cfg", [local.url])
    sidecar = await start_preloader(
        preloader_settings(cfg, preloader_redis_url, sidecar_url=local.url)
    )

    async def ready() -> bool:
        return (await sidecar.ready())[0] == 200

    await eventually(ready, within_s=90)
    assert local.loaded_models() == {"iris-lr"}
    _, body = await sidecar.ready()
    # (Only the typo matters here; a warm-up inference can also fail on a busy machine.)
    [failed] = [f for f in body["endpoints"]["mme"]["failed"] if f["model"] == "iris-lr-typo"]
    assert failed["model"] == "iris-lr-typo"
    assert failed["instance"] == local.url
    assert "iris-lr-typo" in body["endpoints"]["mme"]["reason"]
    assert sidecar.metric("preloader_warm_failures_total", endpoint="mme") >= 3
    assert "GAVE UP waiting after 3 attempts" in sidecar.output.getvalue()
    await sidecar.stop()

    cluster = await start_preloader(preloader_settings(cfg, preloader_redis_url))
    await eventually(lambda: warm_flag(redis_client, "mme"), within_s=90)
    assert cluster.leading("mme")


async def test_with_redis_down_cluster_mode_warms_on_its_own(
    tmp_path: Path,
    fresh_mlservers: MLServerPair,
    own_redis: RedisServer,
    start_preloader: PreloaderFactory,
) -> None:
    """Redis down from the start: no lock can be taken, the preloader warms anyway (and /ready
    says so); once Redis is back it takes the lock and publishes the warm flag."""
    own_redis.kill()
    cfg = one_tenant(tmp_path / "cfg", [m.url for m in fresh_mlservers])
    preloader = await start_preloader(preloader_settings(cfg, f"{own_redis.url}/0"))

    async def ready() -> bool:
        return (await preloader.ready())[0] == 200

    await eventually(ready, within_s=90)
    for instance in fresh_mlservers:
        assert instance.loaded_models() == {"iris-lr"}
    _, body = await preloader.ready()
    assert body["endpoints"]["mme"]["solo"] is True
    assert not preloader.leading("mme")

    own_redis.restart()
    client = aioredis.Redis.from_url(f"{own_redis.url}/0")
    try:

        async def leading() -> bool:
            return preloader.leading("mme")

        await eventually(leading, within_s=30)
        await eventually(lambda: warm_flag(client, "mme"), within_s=30)
        _, body = await preloader.ready()
        assert body["endpoints"]["mme"]["solo"] is False
    finally:
        await client.aclose()


@pytest.fixture
async def aws3(moto: MotoServer, sagemaker_front: SageMakerFront, aws_credentials: None) -> AwsUrls:
    """The SageMaker endpoint, with three instances."""
    moto.reset()
    await create_mme_endpoint(moto.url, ENDPOINT_NAME, 3)
    return AwsUrls(runtime=sagemaker_front.url, control=moto.url)


async def test_sagemaker_keep_warm_invokes_once_per_instance(
    tmp_path: Path, aws3: AwsUrls, sagemaker_front: SageMakerFront, preloader_redis_url: str
) -> None:
    """With 3 instances, one keep-warm round invokes each model 3 times (SageMaker routes each
    invocation to one instance: one per model would refresh one instance's LRU entry)."""
    cfg = sagemaker_config(tmp_path / "cfg", aws3, keep_warm_max_rps=50)
    settings = preloader_settings(cfg, preloader_redis_url)
    from tenancy.store import ConfigStore

    store = ConfigStore(cfg.root)
    store.load_initial()
    async with AsyncExitStack() as stack:
        engine = Preloader(
            settings,
            store=store,
            session=await stack.enter_async_context(http_session()),
            redis=await stack.enter_async_context(redis_client(settings.redis_target)),
            sagemaker=await stack.enter_async_context(sagemaker_clients()),
            metrics=PreloaderMetrics(),
            progress=Progress(tty=False),
        )
        warmer = engine.build_warmer("sm", store.current.endpoints["sm"], None)
        assert isinstance(warmer, SageMakerWarmer)
        status = await warmer.warm_once()
        assert status.warm
        assert status.instances == 3
        counts = {m: len(sagemaker_front.requests_for(m)) for m in MODELS}
        assert counts == {m: 3 for m in MODELS}
        await warmer.keep_warm()
        counts = {m: len(sagemaker_front.requests_for(m)) for m in MODELS}
        assert counts == {m: 6 for m in MODELS}
        assert all(r.status == 200 for r in sagemaker_front.requests)


async def test_warm_flag_outlives_a_keep_warm_pass_longer_than_its_ttl(
    tmp_path: Path,
    aws3: AwsUrls,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_preloader: PreloaderFactory,
) -> None:
    """A keep-warm pass paced to 2 invocations/s over 2 models x 3 instances lasts about 3 s; the
    flag's TTL is 1 s: a task of its own keeps it set the whole time."""
    cfg = sagemaker_config(tmp_path / "cfg", aws3, keep_warm_interval_s=0.2, keep_warm_max_rps=2)
    await start_preloader(preloader_settings(cfg, preloader_redis_url, warm_flag_ttl_s=1.0))
    await eventually(lambda: warm_flag(redis_client, "sm"), within_s=90)
    missing = 0
    until = time.monotonic() + 3.5
    while time.monotonic() < until:
        missing += not await warm_flag(redis_client, "sm")
        await asyncio.sleep(0.05)
    assert missing == 0


async def test_lock_lease_is_timed_from_the_send(own_redis: RedisServer) -> None:
    """Leader A reaches Redis through a proxy that turns slow (1.5 s each way, past the 1 s lease);
    B reaches it directly. A must stop claiming the lock before B can take it: never both lead."""
    direct = aioredis.Redis.from_url(f"{own_redis.url}/0", socket_timeout=5.0)
    async with DelayProxy("127.0.0.1", own_redis.port) as proxy:
        slow = aioredis.Redis.from_url(proxy.url(path="/0"), socket_timeout=5.0)

        async def work() -> None:
            await asyncio.Event().wait()

        a = Leadership(RedisLock(slow, "wr:test:lock", "a", ttl_s=1.0), work, ttl_s=1.0)
        b = Leadership(RedisLock(direct, "wr:test:lock", "b", ttl_s=1.0), work, ttl_s=1.0)
        a_task = asyncio.create_task(a.run())

        async def a_leads() -> bool:
            return a.leading

        await eventually(a_leads, within_s=5)
        b_task = asyncio.create_task(b.run())
        await asyncio.sleep(0.2)
        proxy.delay_s = 1.5
        both = 0
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            both += a.leading and b.leading
            await asyncio.sleep(0.01)
        assert b.leading
        assert both == 0
        assert a.solo  # Redis too slow for A: it keeps warming on its own
        for task in (a_task, b_task):
            task.cancel()
        await asyncio.gather(a_task, b_task, return_exceptions=True)
        await slow.aclose()
    await direct.aclose()
