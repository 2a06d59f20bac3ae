"""The SageMaker-compatible front, driven by real SDK clients (boto3's and aiobotocore's
``sagemaker-runtime``) pointed at the router: success, stickiness, every error class, each auth
failure. Models are real (MLServer); the SDK parses the answers exactly as it parses SageMaker's."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import orjson
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.router_fixtures import (
    IRIS_SETOSA,
    ConfigDir,
    RouterFactory,
    RunningRouter,
    model_predict,
    output_data,
    sha,
    v2_body,
)
from tests.support.sagemaker_front import SageMakerFront

KEY_ID, SECRET = "AKIAACMETEST00000001", "acme-secret-0001"
FILE_KEY_ID, FILE_SECRET = "AKIAACMETEST00000002", "acme-secret-from-a-file"
REGION = "eu-central-1"  # any region the caller's SDK is configured with


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_AWS_SECRET", SECRET)
    # The router's own credentials, for tenants on a sagemaker endpoint.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


# A first model load on a busy 2-core machine can take seconds: generous limits, never hit when well.
SLOW_OK = {"timeout_ms": 30000}


@pytest.fixture
def config(tmp_path: Path, fresh_mlservers: Any) -> ConfigDir:
    mme_config = ConfigDir(tmp_path / "cfg")
    mme_config.endpoints(
        {"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers], **SLOW_OK}}
    )
    secret_file = tmp_path / "acme-secret"
    secret_file.write_text(FILE_SECRET + "\n")
    aws_keys = [
        {"access_key_id": KEY_ID, "secret_env": "ACME_AWS_SECRET"},
        {"access_key_id": FILE_KEY_ID, "secret_file": str(secret_file)},
    ]
    mme_config.tenant(
        "acme", endpoint="mme", model="iris-lr", auth={"aws_access_keys": aws_keys}, limits=SLOW_OK
    )
    mme_config.tenant(
        "exp",
        endpoint="mme",
        model="iris-lr",
        limits=SLOW_OK,
        experiment={
            "name": "front-ab",
            "kind": "ab",
            "variants": [
                {"name": "lr", "model": "iris-lr", "weight": 50},
                {"name": "tree", "model": "iris-tree", "weight": 50},
            ],
        },
    )
    mme_config.tenant(
        "keyed",
        endpoint="mme",
        model="iris-lr",
        auth={"api_key_sha256": [sha("bearer-key")]},
        limits=SLOW_OK,
    )
    mme_config.tenant(
        "busy", endpoint="mme", model="iris-lr", limits={"rps": 0.01, "burst": 1, **SLOW_OK}
    )
    return mme_config


@pytest.fixture
async def router(config: ConfigDir, start_router: RouterFactory) -> RunningRouter:
    return await start_router(config)


@pytest.fixture
async def aio(router: RunningRouter) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "sagemaker-runtime",
        region_name=REGION,
        endpoint_url=router.url,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=AioConfig(retries={"total_max_attempts": 1}),  # the router's answer, not retries
    ) as client:
        yield client


def boto3_client(url: str, key_id: str = KEY_ID, secret: str = SECRET) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )


async def in_thread(call: Callable[..., Any], **kwargs: Any) -> Any:
    """boto3 blocks: run it off the loop the router serves on."""
    return await asyncio.to_thread(call, **kwargs)


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, dict[str, Any]]:
    response: dict[str, Any] = exc.value.response  # type: ignore[assignment]
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"], response


ROWS = [IRIS_SETOSA, [6.9, 3.1, 5.4, 2.1]]


# -- success ---------------------------------------------------------------------------------


async def test_boto3_invoke_endpoint_gets_the_models_answer(
    router: RunningRouter, models_dir: Path
) -> None:
    client = boto3_client(router.url)
    answer = await in_thread(
        client.invoke_endpoint,
        EndpointName="acme",
        Body=v2_body(ROWS),
        ContentType="application/json",
        Accept="application/json",
        InferenceId="inference-77",
    )
    assert output_data(answer["Body"].read()) == model_predict(models_dir, "iris-lr", ROWS)
    assert answer["ContentType"] == "application/json"
    assert answer["InvokedProductionVariant"] == "default"
    assert answer["ResponseMetadata"]["RequestId"] == "inference-77"
    assert router.metric("router_requests_total", tenant="acme", code="200") == 1


async def test_aiobotocore_with_the_key_from_a_secret_file(router: RunningRouter) -> None:
    async with get_session().create_client(
        "sagemaker-runtime",
        region_name="ap-south-1",
        endpoint_url=router.url,
        aws_access_key_id=FILE_KEY_ID,
        aws_secret_access_key=FILE_SECRET,
    ) as client:
        answer = await client.invoke_endpoint(
            EndpointName="acme", Body=v2_body(ROWS), ContentType="application/json"
        )
        assert len(output_data(await answer["Body"].read())) == 2


async def test_bearer_keys_work_as_on_the_native_route(router: RunningRouter) -> None:
    url = f"{router.url}/endpoints/keyed/invocations"
    sent = {"Content-Type": "application/json"}
    async with router.session.post(
        url, data=v2_body(ROWS), headers={**sent, "Authorization": "Bearer bearer-key"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Amzn-Invoked-Production-Variant"] == "default"
    async with router.session.post(
        url, data=v2_body(ROWS), headers={**sent, "Authorization": "Bearer wrong"}
    ) as resp:
        assert resp.status == 403
        assert resp.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
        assert (await resp.json())["__type"] == "UnrecognizedClientException"


# -- stickiness ------------------------------------------------------------------------------


async def assigned(router: RunningRouter, tenant: str, unit: str) -> str:
    async with router.session.get(
        f"{router.url}/v1/admin/tenants/{tenant}/assignment", params={"unit": unit}
    ) as resp:
        variant: str = (await resp.json())["variant"]
        return variant


async def test_unit_from_custom_attributes_is_sticky(router: RunningRouter, aio: Any) -> None:
    seen: dict[str, set[str]] = {}
    for unit in ("u-1", "u-2", "u-3", "u-4", "u-5", "u-6"):
        for attributes in (f"unit={unit}", f"trace=t1;unit={unit}", f"a=1, unit={unit} ,b=2"):
            answer = await aio.invoke_endpoint(
                EndpointName="exp",
                Body=v2_body(ROWS),
                ContentType="application/json",
                CustomAttributes=attributes,
            )
            seen.setdefault(unit, set()).add(answer["InvokedProductionVariant"])
    for unit, variants in seen.items():
        assert variants == {await assigned(router, "exp", unit)}, unit
    assert router.metric("router_assignments_total", source="stored") >= 12


async def test_x_unit_id_header_wins_and_target_variant_is_checked_not_obeyed(
    router: RunningRouter,
) -> None:
    unit = ""
    for candidate in (f"unit-{i}" for i in range(50)):
        if await assigned(router, "exp", candidate) == "tree":
            unit = candidate
            break
    async with router.session.post(
        f"{router.url}/endpoints/exp/invocations",
        data=v2_body(ROWS),
        headers={
            "Content-Type": "application/json",
            "X-Unit-Id": unit,
            "X-Amzn-SageMaker-Custom-Attributes": "unit=someone-else",
            "X-Amzn-SageMaker-Target-Variant": "lr",  # a variant of this tenant: allowed, ignored
            "X-Amzn-SageMaker-Target-Model": "iris-lr",
        },
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Amzn-Invoked-Production-Variant"] == "tree"
        assert resp.headers["X-Model-Id"] == "iris-tree"


# -- errors ----------------------------------------------------------------------------------


async def test_validation_error_for_an_unknown_endpoint_and_bad_input(aio: Any) -> None:
    with pytest.raises(ClientError) as exc:
        await aio.invoke_endpoint(EndpointName="nobody", Body=b"{}", ContentType="application/json")
    assert error_of(exc)[:2] == (400, "ValidationError")
    assert "nobody" in str(exc.value)


async def test_model_error_carries_the_models_status(router: RunningRouter, aio: Any) -> None:
    # MLServer refuses a body that is not an inference request (422), and fails on a wrong shape (500).
    with pytest.raises(aio.exceptions.ModelError) as exc:
        await aio.invoke_endpoint(
            EndpointName="acme", Body=b"not json", ContentType="application/json"
        )
    status, code, response = error_of(exc)
    assert (status, code) == (424, "ModelError")
    assert 400 <= response["OriginalStatusCode"] < 500
    assert response["OriginalMessage"]
    with pytest.raises(aio.exceptions.ModelError) as exc:
        await aio.invoke_endpoint(
            EndpointName="acme", Body=v2_body([[1.0, 2.0]]), ContentType="application/json"
        )
    assert error_of(exc)[2]["OriginalStatusCode"] == 500
    # Counted like any request, under the status the caller got.
    assert router.metric("router_requests_total", tenant="acme", code="424") == 2


async def test_throttling_exception_over_the_tenants_rate(router: RunningRouter) -> None:
    client = boto3_client(router.url)
    call = {"EndpointName": "busy", "Body": v2_body(ROWS), "ContentType": "application/json"}
    await in_thread(client.invoke_endpoint, **call)
    with pytest.raises(ClientError) as exc:
        await in_thread(client.invoke_endpoint, **call)
    assert error_of(exc)[:2] == (429, "ThrottlingException")


async def test_access_denied_for_a_target_model_of_another_tenant(aio: Any) -> None:
    with pytest.raises(ClientError) as exc:
        await aio.invoke_endpoint(
            EndpointName="acme", TargetModel="iris-tree", Body=b"{}", ContentType="application/json"
        )
    assert error_of(exc)[:2] == (403, "AccessDeniedException")


async def test_internal_failure_when_no_instance_answers(
    tmp_path: Path, start_router: RouterFactory
) -> None:
    cfg = ConfigDir(tmp_path / "dead")
    cfg.endpoints({"dead": {"kind": "v2", "instances": ["http://127.0.0.1:9"]}})
    cfg.tenant("t", endpoint="dead", model="m")
    router = await start_router(cfg)
    with pytest.raises(ClientError) as exc:
        await in_thread(
            boto3_client(router.url).invoke_endpoint,
            EndpointName="t",
            Body=b"{}",
            ContentType="application/json",
        )
    assert error_of(exc)[:2] == (500, "InternalFailure")


def sagemaker_tenants(root: Path, front: SageMakerFront) -> ConfigDir:
    cfg = ConfigDir(root)
    cfg.endpoints(
        {"sm": {"kind": "sagemaker", "endpoint_name": "mme-test", "region": "us-east-1",
                "endpoint_url": front.url, **SLOW_OK}}
    )  # fmt: skip
    cfg.tenant("t", endpoint="sm", model="iris-lr", limits=SLOW_OK)
    cfg.tenant("short", endpoint="sm", model="iris-lr", limits={"timeout_ms": 400})
    return cfg


async def test_service_unavailable_and_model_not_ready_through_a_sagemaker_endpoint(
    tmp_path: Path, sagemaker_front: SageMakerFront, start_router: RouterFactory
) -> None:
    router = await start_router(sagemaker_tenants(tmp_path / "cfg", sagemaker_front))
    client = boto3_client(router.url)
    call = {"EndpointName": "t", "Body": v2_body(ROWS), "ContentType": "application/json"}
    sagemaker_front.throttle_next(1)  # the MME throttles the router: it sheds, the caller retries
    with pytest.raises(ClientError) as exc:
        await in_thread(client.invoke_endpoint, **call)
    assert error_of(exc)[:2] == (503, "ServiceUnavailable")
    sagemaker_front.not_ready_next(100)  # still loading when the tenant's 400 ms are over
    with pytest.raises(ClientError) as exc:
        await in_thread(client.invoke_endpoint, **{**call, "EndpointName": "short"})
    assert error_of(exc)[:2] == (429, "ModelNotReadyException")
    assert len(sagemaker_front.requests) > 2  # the router retried within the deadline


async def test_custom_attributes_travel_both_ways(
    tmp_path: Path, sagemaker_front: SageMakerFront, start_router: RouterFactory
) -> None:
    router = await start_router(sagemaker_tenants(tmp_path / "cfg", sagemaker_front))
    sagemaker_front.answer_attributes = "score-version=3"
    answer = await in_thread(
        boto3_client(router.url).invoke_endpoint,
        EndpointName="t",
        Body=v2_body(ROWS),
        ContentType="application/json",
        CustomAttributes="trace=abc;unit=u-9",
        InferenceId="inf-5",
    )
    assert answer["CustomAttributes"] == "score-version=3"
    assert len(orjson.loads(answer["Body"].read())["outputs"][0]["data"]) == 2
    [sent] = sagemaker_front.requests
    assert sent.custom_attributes == "trace=abc;unit=u-9"
    assert sent.headers["X-Amzn-SageMaker-Inference-Id"] == "inf-5"


# -- authentication failures -----------------------------------------------------------------


async def test_wrong_secret_is_an_invalid_signature(router: RunningRouter) -> None:
    with pytest.raises(ClientError) as exc:
        await in_thread(
            boto3_client(router.url, secret="not-the-secret").invoke_endpoint,
            EndpointName="acme",
            Body=v2_body(ROWS),
            ContentType="application/json",
        )
    assert error_of(exc)[:2] == (403, "InvalidSignatureException")


async def test_unknown_access_key_is_unrecognized(router: RunningRouter) -> None:
    with pytest.raises(ClientError) as exc:
        await in_thread(
            boto3_client(router.url, key_id="AKIAUNKNOWN000000000").invoke_endpoint,
            EndpointName="acme",
            Body=v2_body(ROWS),
            ContentType="application/json",
        )
    assert error_of(exc)[:2] == (403, "UnrecognizedClientException")


async def test_key_of_another_tenant_and_unsigned_requests_are_refused(
    router: RunningRouter,
) -> None:
    client = boto3_client(router.url)
    with pytest.raises(ClientError) as exc:  # acme's key on the keyed tenant
        await in_thread(
            client.invoke_endpoint, EndpointName="keyed", Body=b"{}", ContentType="application/json"
        )
    assert error_of(exc)[:2] == (403, "UnrecognizedClientException")
    async with router.session.post(
        f"{router.url}/endpoints/acme/invocations", data=v2_body(ROWS)
    ) as resp:
        assert resp.status == 403
        assert resp.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"


async def test_a_tampered_body_does_not_verify(router: RunningRouter, aio: Any) -> None:
    def tamper(request: Any, **_: Any) -> None:
        request.body = request.body.replace(b"5.1", b"9.1")  # after signing, as a proxy would

    aio.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", tamper)
    with pytest.raises(ClientError) as exc:
        await aio.invoke_endpoint(
            EndpointName="acme", Body=v2_body(ROWS), ContentType="application/json"
        )
    assert error_of(exc)[:2] == (403, "InvalidSignatureException")


@pytest.mark.parametrize(("minutes", "ok"), [(-4, True), (4, True), (-6, False), (6, False)])
async def test_clock_skew_up_to_five_minutes(
    router: RunningRouter, monkeypatch: pytest.MonkeyPatch, minutes: int, ok: bool
) -> None:
    def skewed(remove_tzinfo: bool = True) -> datetime.datetime:
        now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=minutes)
        return now.replace(tzinfo=None) if remove_tzinfo else now

    # The SDK's clock, as seen by its signer.
    monkeypatch.setattr("botocore.auth.get_current_datetime", skewed)
    client = boto3_client(router.url)
    call = {"EndpointName": "acme", "Body": v2_body(ROWS), "ContentType": "application/json"}
    if ok:
        await in_thread(client.invoke_endpoint, **call)
        return
    with pytest.raises(ClientError) as exc:
        await in_thread(client.invoke_endpoint, **call)
    assert error_of(exc)[:2] == (403, "InvalidSignatureException")
    assert "expired" in str(exc.value).lower() or "5 minutes" in str(exc.value)


async def test_a_signature_for_another_service_is_refused(router: RunningRouter) -> None:
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{router.url}/endpoints/acme/invocations"
    request = AWSRequest(
        "POST", url, data=v2_body(ROWS), headers={"Content-Type": "application/json"}
    )
    botocore.auth.SigV4Auth(Credentials(KEY_ID, SECRET), "s3", REGION).add_auth(request)
    async with router.session.post(url, data=request.body, headers=dict(request.headers)) as resp:
        assert resp.status == 403
        assert resp.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
        assert "sagemaker" in (await resp.json())["message"]


async def raw_post(
    router: RunningRouter, path: str, headers: dict[str, bytes], body: bytes
) -> bytes:
    """A request with header bytes no HTTP client library would send."""
    host, port = router.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [f"POST {path} HTTP/1.1".encode(), f"Host: {host}:{port}".encode()]
        head += [name.encode() + b": " + value for name, value in headers.items()]
        head += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def signed_headers(router: RunningRouter, extra: dict[str, str]) -> dict[str, bytes]:
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{router.url}/endpoints/acme/invocations"
    request = AWSRequest(
        "POST", url, data=v2_body(ROWS), headers={"Content-Type": "application/json", **extra}
    )
    botocore.auth.SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", REGION).add_auth(request)
    return {k: v.encode() if isinstance(v, str) else v for k, v in request.headers.items()}


@pytest.mark.parametrize("where", ["signature", "signed header"])
async def test_non_utf8_bytes_in_a_signed_request_are_a_403_not_a_500(
    router: RunningRouter, where: str
) -> None:
    headers = signed_headers(router, {"X-Amzn-SageMaker-Custom-Attributes": "a=1"})
    if where == "signature":
        headers["Authorization"] = headers["Authorization"][:-2] + b"\xff\xfe"
    else:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = b"a=\xff"
    answer = await raw_post(router, "/endpoints/acme/invocations", headers, v2_body(ROWS))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"403", answer[:400]
    assert b"x-amzn-errortype: invalidsignatureexception" in rest.lower()
