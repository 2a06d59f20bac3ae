"""The test support behaves like the real components it stands for."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aredis
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from devstack import mlserver as mls
from devstack.ports import free_port, wait_http
from devstack.redis_server import RedisServer, ensure_redis
from tests.conftest import TEST_REDIS_DB
from tests.support.aws import runtime_client
from tests.support.moto_server import (
    MotoServer,
    create_mme_endpoint,
    current_instance_count,
    queue_sagemaker_results,
    set_instance_count,
)
from tests.support.sagemaker_front import SageMakerFront

MLServerPair = tuple[mls.MLServerInstance, mls.MLServerInstance]

SETOSA = [5.1, 3.5, 1.4, 0.2]  # class 0
VERSICOLOR = [6.4, 3.2, 4.5, 1.5]  # class 1
VIRGINICA = [6.7, 3.0, 5.2, 2.3]  # class 2
NO_RETRIES = AioConfig(retries={"total_max_attempts": 1})


def _outputs(body: bytes | dict[str, Any]) -> list[Any]:
    doc = json.loads(body) if isinstance(body, bytes) else body
    data: list[Any] = doc["outputs"][0]["data"]
    return data


def _predict_in_mlserver_env(model: str, rows: list[list[float]]) -> list[float]:
    """The model's own prediction, computed with MLServer's interpreter and scikit-learn."""
    python = mls.mlserver_bin().parent / "python"
    script = (
        "import json, sys, joblib\n"
        "m = joblib.load(sys.argv[1])\n"
        "print(json.dumps([float(v) for v in m.predict(json.loads(sys.argv[2]))]))\n"
    )
    path = mls.models_dir() / model / "model.joblib"
    out = subprocess.run(
        [str(python), "-c", script, str(path), json.dumps(rows)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result: list[float] = json.loads(out.stdout)
    return result


async def _post_json(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.read()


# -- ports -------------------------------------------------------------------------------------


def test_wait_http_times_out_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}/v2/health/ready"
    with pytest.raises(TimeoutError, match=r"did not answer 200 within 0\.2s"):
        wait_http(url, 0.2)


# -- MLServer ----------------------------------------------------------------------------------


def test_mlserver_pair_uses_distinct_ports(fresh_mlservers: MLServerPair) -> None:
    a, b = fresh_mlservers
    ports = {a.http_port, a.grpc_port, a.metrics_port, b.http_port, b.grpc_port, b.metrics_port}
    assert len(ports) == 6
    assert a.url == f"http://127.0.0.1:{a.http_port}"
    assert a.loaded_models() == set() == b.loaded_models()
    assert {"iris-lr", "iris-tree", "iris-knn", "diabetes-lr"} <= {
        e["name"] for e in a.repository_index()
    }


async def test_mlserver_unloaded_model_is_404_then_load_infers(
    fresh_mlservers: MLServerPair,
) -> None:
    a, b = fresh_mlservers
    body = mls.v2_request([SETOSA, VERSICOLOR, VIRGINICA])
    async with aiohttp.ClientSession() as http:
        status, raw = await _post_json(http, f"{a.url}/v2/models/iris-lr/infer", body)
        assert (status, json.loads(raw)) == (404, {"error": "Model iris-lr not found"})

        status, raw = await _post_json(http, f"{a.url}/v2/repository/models/iris-lr/load")
        assert (status, raw) == (200, b"")

        status, raw = await _post_json(http, f"{a.url}/v2/models/iris-lr/infer", body)
        assert status == 200
        assert _outputs(raw) == [0, 1, 2]
        # Loading on one instance leaves the other cold.
        status, _ = await _post_json(http, f"{b.url}/v2/models/iris-lr/infer", body)
        assert status == 404
    assert await asyncio.to_thread(a.loaded_models) == {"iris-lr"}


async def test_mlserver_inference_equals_the_models_own_prediction(
    fresh_mlservers: MLServerPair,
) -> None:
    a, _ = fresh_mlservers
    rows = [[0.03, -0.04, 0.06, 0.02, -0.04, -0.03, -0.04, 0.0, 0.02, -0.02], [0.0] * 10]
    expected = await asyncio.to_thread(_predict_in_mlserver_env, "diabetes-lr", rows)
    await asyncio.to_thread(a.load, "diabetes-lr")
    async with aiohttp.ClientSession() as http:
        status, raw = await _post_json(
            http, f"{a.url}/v2/models/diabetes-lr/infer", mls.v2_request(rows)
        )
        assert status == 200
        assert _outputs(raw) == pytest.approx(expected)

        # Input the model cannot take: MLServer answers a plain-text 500.
        await asyncio.to_thread(a.load, "iris-lr")
        async with http.post(
            f"{a.url}/v2/models/iris-lr/infer", json=mls.v2_request([[1.0, 2.0, 3.0]])
        ) as resp:
            assert resp.status == 500
            assert resp.content_type == "text/plain"


def test_mlserver_kill_and_restart_comes_back_empty(fresh_mlservers: MLServerPair) -> None:
    _, b = fresh_mlservers
    b.load("iris-tree")
    assert b.loaded_models() == {"iris-tree"}
    b.kill()
    assert not b.is_alive()
    b.restart()
    assert b.is_alive()
    assert b.loaded_models() == set()


# -- SageMaker front ---------------------------------------------------------------------------


async def test_sagemaker_front_real_inference_and_one_lazy_load_per_model(
    sagemaker_front: SageMakerFront,
) -> None:
    async with runtime_client(sagemaker_front.url) as rt:
        first = [
            rt.invoke_endpoint(
                EndpointName="mme-test",
                TargetModel="iris-lr",
                ContentType="application/json",
                Accept="application/json",
                CustomAttributes=f"req={i}",
                Body=json.dumps(mls.v2_request([SETOSA])),
            )
            for i in range(4)
        ]
        answers = await asyncio.gather(*first)
        for answer in answers:
            assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
            assert answer["ContentType"] == "application/json"
            assert answer["InvokedProductionVariant"] == "AllTraffic"
            assert _outputs(await answer["Body"].read()) == [0]

        tree = await rt.invoke_endpoint(
            EndpointName="mme-test",
            TargetModel="iris-tree.tar.gz",
            ContentType="application/json",
            Body=json.dumps(mls.v2_request([VIRGINICA])),
        )
        assert _outputs(await tree["Body"].read()) == [2]

    assert sagemaker_front.load_counts == {"iris-lr": 1, "iris-tree": 1}
    recorded = sagemaker_front.requests_for("iris-lr")
    assert len(recorded) == 4
    assert {r.custom_attributes for r in recorded} == {f"req={i}" for i in range(4)}
    assert all(r.content_type == "application/json" for r in recorded)
    assert all(r.accept == "application/json" for r in recorded)
    assert all(r.status == 200 for r in recorded)
    assert sagemaker_front.requests[-1].headers["X-Amzn-SageMaker-Target-Model"] == (
        "iris-tree.tar.gz"
    )


async def test_sagemaker_front_load_delay_makes_cold_start_visible(
    sagemaker_front: SageMakerFront,
) -> None:
    sagemaker_front.load_delay_s = 0.5
    body = json.dumps(mls.v2_request([SETOSA]))
    async with runtime_client(sagemaker_front.url) as rt:
        started = time.monotonic()
        await rt.invoke_endpoint(
            EndpointName="mme-test",
            TargetModel="iris-knn",
            ContentType="application/json",
            Body=body,
        )
        cold = time.monotonic() - started
        started = time.monotonic()
        await rt.invoke_endpoint(
            EndpointName="mme-test",
            TargetModel="iris-knn",
            ContentType="application/json",
            Body=body,
        )
        warm = time.monotonic() - started
    assert cold >= 0.5 > warm
    assert sagemaker_front.load_counts["iris-knn"] == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "message"),
    [
        (
            {"EndpointName": "nope", "TargetModel": "iris-lr"},
            400,
            "ValidationError",
            "Endpoint nope of account 123456789012 not found.",
        ),
        (
            {"EndpointName": "mme-test", "TargetModel": "acme-intent-v9"},
            400,
            "ValidationError",
            "Failed to download model data(bucket: ",
        ),
        ({"EndpointName": "mme-test"}, 400, "ValidationError", "missing a target model header"),
    ],
)
async def test_sagemaker_front_validation_errors(
    sagemaker_front: SageMakerFront, kwargs: dict[str, str], status: int, code: str, message: str
) -> None:
    async with runtime_client(sagemaker_front.url, config=NO_RETRIES) as rt:
        with pytest.raises(ClientError) as caught:
            await rt.invoke_endpoint(
                **kwargs, ContentType="application/json", Body=json.dumps(mls.v2_request([SETOSA]))
            )
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error["Error"]["Code"] == code
    assert message in error["Error"]["Message"]
    assert sagemaker_front.load_counts == {}


async def test_sagemaker_front_model_error_carries_the_original(
    sagemaker_front: SageMakerFront,
) -> None:
    async with runtime_client(sagemaker_front.url, config=NO_RETRIES) as rt:
        with pytest.raises(ClientError) as caught:
            await rt.invoke_endpoint(
                EndpointName="mme-test",
                TargetModel="iris-lr",
                ContentType="application/json",
                Body=json.dumps(mls.v2_request([[1.0, 2.0, 3.0]])),  # iris takes 4 features
            )
        assert isinstance(caught.value, rt.exceptions.ModelError)
    error: dict[str, Any] = dict(caught.value.response)
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["Error"]["Code"] == "ModelError"
    assert error["Error"]["Message"].startswith("Received server error (500) from model")
    assert error["OriginalStatusCode"] == 500
    assert error["OriginalMessage"] == "Internal Server Error"
    assert error["LogStreamArn"].endswith("/aws/sagemaker/Endpoints/mme-test")
    assert sagemaker_front.load_counts == {"iris-lr": 1}


async def test_sagemaker_front_throttling_is_retried_by_botocore(
    sagemaker_front: SageMakerFront,
) -> None:
    body = json.dumps(mls.v2_request([SETOSA]))
    sagemaker_front.throttle_next(1)
    async with runtime_client(sagemaker_front.url, config=NO_RETRIES) as rt:
        with pytest.raises(ClientError) as caught:
            await rt.invoke_endpoint(
                EndpointName="mme-test",
                TargetModel="iris-lr",
                ContentType="application/json",
                Body=body,
            )
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    sagemaker_front.throttle_next(1)
    sagemaker_front.reset_records()
    async with runtime_client(
        sagemaker_front.url, config=AioConfig(retries={"mode": "standard", "total_max_attempts": 2})
    ) as rt:
        answer = await rt.invoke_endpoint(
            EndpointName="mme-test",
            TargetModel="iris-lr",
            ContentType="application/json",
            Body=body,
        )
    assert _outputs(await answer["Body"].read()) == [0]
    assert [r.status for r in sagemaker_front.requests] == [400, 200]


async def test_sagemaker_front_refuses_unsigned_and_misscoped_requests(
    sagemaker_front: SageMakerFront,
) -> None:
    url = f"{sagemaker_front.url}/endpoints/mme-test/invocations"
    headers = {"X-Amzn-SageMaker-Target-Model": "iris-lr"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=mls.v2_request([SETOSA]), headers=headers) as resp:
            assert resp.status == 403
            assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        bad = (
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sagemaker-runtime/aws4_request"
        )
        async with http.post(
            url, json=mls.v2_request([SETOSA]), headers={**headers, "Authorization": bad}
        ) as resp:
            assert resp.status == 403
            assert resp.headers["x-amzn-ErrorType"] == "InvalidSignatureException"


# -- moto --------------------------------------------------------------------------------------


async def test_moto_queued_results_come_back_from_invoke_endpoint(moto: MotoServer) -> None:
    await asyncio.to_thread(moto.reset)
    await queue_sagemaker_results(
        moto.url,
        [
            {"Body": '{"first": 1}', "ContentType": "application/json"},
            {"Body": "second", "ContentType": "text/plain", "CustomAttributes": "c=2"},
        ],
    )
    async with runtime_client(moto.url) as rt:

        async def invoke(body: str) -> tuple[bytes, str]:
            answer = await rt.invoke_endpoint(
                EndpointName="any", TargetModel="m", ContentType="application/json", Body=body
            )
            return await answer["Body"].read(), answer["ContentType"]

        assert await invoke("a") == (b'{"first": 1}', "application/json")
        assert await invoke("b") == (b"second", "text/plain")
        # moto memoises per request: the identical request gets its first answer again.
        assert await invoke("a") == (b'{"first": 1}', "application/json")
        # Queue empty: moto's canned default.
        assert await invoke("c") == (b"body", "content_type")


async def test_moto_endpoint_scale_out_shows_in_describe(moto: MotoServer) -> None:
    await asyncio.to_thread(moto.reset)
    arn = await create_mme_endpoint(moto.url, "mme-scale", 1)
    assert arn.endswith(":endpoint/mme-scale")
    assert await current_instance_count(moto.url, "mme-scale") == 1
    await set_instance_count(moto.url, "mme-scale", 3)
    assert await current_instance_count(moto.url, "mme-scale") == 3


# -- Redis -------------------------------------------------------------------------------------


def test_redis_url_is_the_test_db_and_flushed(redis_url: str) -> None:
    assert redis_url.endswith(f"/{TEST_REDIS_DB}")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("warmroute:test", "1")
    finally:
        client.close()


async def test_redis_server_kill_pause_restart(own_redis: RedisServer) -> None:
    client = aredis.Redis.from_url(own_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"

        own_redis.pause()
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            await client.get("k")
        own_redis.resume()
        assert await client.get("k") == b"v"

        own_redis.kill()
        assert not own_redis.ping()
        with pytest.raises(redis.ConnectionError):
            await client.get("k")
        own_redis.restart()
        assert own_redis.ping()
        assert await client.get("k") is None  # no persistence: it comes back empty
    finally:
        await client.aclose()


def test_ensure_redis_starts_one_only_when_none_answers(own_redis: RedisServer) -> None:
    assert ensure_redis(own_redis.url) is None
    started = ensure_redis(f"redis://127.0.0.1:{free_port()}/0")
    assert started is not None
    try:
        assert started.ping()
    finally:
        started.stop()
    assert not started.is_alive()
