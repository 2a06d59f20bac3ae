"""The preloader on a ``sagemaker`` endpoint: moto answers DescribeEndpoint (and scales), the SageMaker
front over MLServer answers InvokeEndpoint with real inference and a real lazy load per model.

The endpoint's ``endpoint_url`` (runtime) points at the front and its ``control_endpoint_url``
(DescribeEndpoint) at moto, as VPC interface endpoints split them in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from preloader.once import run_once
from preloader.progress import Progress
from tests.conftest import MLServerPair
from tests.preloader_fixtures import (
    IRIS_SAMPLE,
    PreloaderFactory,
    preloader_settings,
    warm_flag,
)
from tests.router_fixtures import ConfigDir, eventually
from tests.support.moto_server import MotoServer, create_mme_endpoint, set_instance_count
from tests.support.sagemaker_front import SageMakerFront

pytest_plugins = ("tests.preloader_fixtures",)

ENDPOINT_NAME = "mme-test"  # the name the sagemaker_front fixture serves
MODELS = ("iris-lr", "iris-tree")


@dataclass(frozen=True)
class AwsUrls:
    runtime: str  # the SageMaker-Runtime front over MLServer
    control: str  # moto: DescribeEndpoint and scaling


@pytest_asyncio.fixture
async def aws(
    moto: MotoServer, sagemaker_front: SageMakerFront, aws_credentials: None
) -> AsyncIterator[AwsUrls]:
    moto.reset()
    await create_mme_endpoint(moto.url, ENDPOINT_NAME, 1)
    yield AwsUrls(runtime=sagemaker_front.url, control=moto.url)


def sagemaker_config(root: Path, aws: AwsUrls, **preload: Any) -> ConfigDir:
    cfg = ConfigDir(root)
    cfg.endpoints(
        {
            "sm": {
                "kind": "sagemaker",
                "endpoint_name": ENDPOINT_NAME,
                "region": "us-east-1",
                "endpoint_url": aws.runtime,
                "control_endpoint_url": aws.control,
                "describe_interval_s": 0.2,
                "preload": {"keep_warm_interval_s": 3600, **preload},
            }
        }
    )
    cfg.tenant("acme", endpoint="sm", model="iris-lr", preload={"sample": IRIS_SAMPLE})
    cfg.tenant("globex", endpoint="sm", model="iris-tree", preload={"sample": IRIS_SAMPLE})
    return cfg


def invocations(front: SageMakerFront) -> dict[str, int]:
    return {m: len(front.requests_for(m)) for m in MODELS}


async def test_warms_by_invoking_and_rewarms_after_scale_out(
    tmp_path: Path,
    aws: AwsUrls,
    sagemaker_front: SageMakerFront,
    moto: MotoServer,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_preloader: PreloaderFactory,
    fresh_mlservers: MLServerPair,
) -> None:
    """Each model is invoked once per instance (one instance: once) with its sample, which loads
    it; when DescribeEndpoint shows 3 instances the warm set is invoked again, 3 times per model."""
    cfg = sagemaker_config(tmp_path / "cfg", aws)
    preloader = await start_preloader(preloader_settings(cfg, preloader_redis_url))
    await eventually(lambda: warm_flag(redis_client, "sm"), within_s=20)
    assert dict(sagemaker_front.load_counts) == {m: 1 for m in MODELS}
    assert invocations(sagemaker_front) == {m: 1 for m in MODELS}
    assert all(r.status == 200 for r in sagemaker_front.requests)
    assert {r.body for r in sagemaker_front.requests} == {orjson.dumps(IRIS_SAMPLE)}
    assert fresh_mlservers[0].loaded_models() == set(MODELS)

    await set_instance_count(moto.url, ENDPOINT_NAME, 3)

    async def rewarmed() -> bool:
        return invocations(sagemaker_front) == {m: 4 for m in MODELS}

    await eventually(rewarmed, within_s=10)
    assert "scale-out endpoint=sm instances 1 -> 3" in preloader.output.getvalue()
    status, body = await preloader.ready()
    assert status == 200, body
    assert body["endpoints"]["sm"]["instances"] == 3
    assert preloader.metric("preloader_models_warm", endpoint="sm") == 2


async def test_keep_warm_reloads_an_evicted_model(
    tmp_path: Path,
    aws: AwsUrls,
    sagemaker_front: SageMakerFront,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_preloader: PreloaderFactory,
    fresh_mlservers: MLServerPair,
) -> None:
    """Keep-warm re-invokes every model on its interval: a model the endpoint evicted (unloaded
    behind the front's back) is loaded again by the next round, not by a caller."""
    cfg = sagemaker_config(tmp_path / "cfg", aws, keep_warm_interval_s=0.3, keep_warm_max_rps=50)
    await start_preloader(preloader_settings(cfg, preloader_redis_url))
    await eventually(lambda: warm_flag(redis_client, "sm"), within_s=20)
    fresh_mlservers[0].unload("iris-tree")  # LRU eviction on the endpoint

    async def reloaded() -> bool:
        return sagemaker_front.load_counts["iris-tree"] == 2

    await eventually(reloaded, within_s=10)
    assert sagemaker_front.load_counts["iris-lr"] == 1
    assert all(r.status == 200 for r in sagemaker_front.requests)


@pytest.mark.usefixtures("aws_credentials")
async def test_once_lists_a_describe_failure(
    tmp_path: Path, moto: MotoServer, preloader_redis_url: str
) -> None:
    """``--once`` for an endpoint DescribeEndpoint does not know is not ok and says why. (moto's
    InvokeEndpoint answers for any endpoint name, so the models themselves "warm".)"""
    moto.reset()
    cfg = sagemaker_config(tmp_path / "cfg", AwsUrls(runtime=moto.url, control=moto.url))
    cfg.endpoints(
        {"sm": {"kind": "sagemaker", "endpoint_name": "mme-missing", "region": "us-east-1",
                "endpoint_url": moto.url}}
    )  # fmt: skip
    result = await run_once(
        preloader_settings(cfg, preloader_redis_url), progress=Progress(tty=False)
    )
    assert not result.ok
    [failure] = result.failures
    assert failure.line().startswith(
        "FAILED endpoint=sm instance=mme-missing model=-: DescribeEndpoint failed"
    )
    assert "mme-missing" in failure.reason
