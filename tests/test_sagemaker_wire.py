"""The sagemaker backend's InvokeEndpoint is what aiobotocore's own client sends, byte for byte where
it matters, and its SigV4 signature verifies with botocore's signer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

from tests.router_fixtures import ConfigDir, RouterFactory
from tests.support.sagemaker_front import RecordedRequest, SageMakerFront, start_sagemaker_front

ACCESS_KEY, SECRET = "AKIDWIRETEST", "wire-test-secret"
REGION = "eu-west-1"
# Differ per request by design: the time, the signature over it, the SDK's per-call UUID, the agent.
PER_REQUEST = {"x-amz-date", "authorization", "amz-sdk-invocation-id", "user-agent"}


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "wire-session-token")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest_asyncio.fixture
async def recorder() -> AsyncIterator[SageMakerFront]:
    """The test front, recording every request; its model server is unreachable (answers 500)."""
    front = await start_sagemaker_front(
        "http://127.0.0.1:9", endpoint_name="mme-wire", region=REGION
    )
    try:
        yield front
    finally:
        await front.close()


def signed_by_botocore(recorded: RecordedRequest, url: str) -> str:
    """The Authorization header botocore's SigV4Auth computes for the recorded request, over the
    headers it says it signed (as a verifying server does)."""
    listed = recorded.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    headers = {k: v for k, v in recorded.headers.items() if k.lower() in listed.split(";")}
    request = AWSRequest("POST", url + recorded.path, data=recorded.body, headers=headers)
    auth = SigV4Auth(
        ReadOnlyCredentials(ACCESS_KEY, SECRET, "wire-session-token"), "sagemaker", REGION
    )
    request.context["timestamp"] = recorded.headers["X-Amz-Date"]
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    signed = auth.signed_headers(auth.headers_to_sign(request))
    return f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, SignedHeaders={signed}, Signature={signature}"


@pytest.mark.parametrize("accept", ["application/json", None])
async def test_router_sends_what_aiobotocore_sends(
    tmp_path: Path, recorder: SageMakerFront, start_router: RouterFactory, accept: str | None
) -> None:
    body = b'{"instances": [[1, 2, 3]],   "odd": "spacing"}'
    # 1. aiobotocore's own client, the same call.
    async with get_session().create_client(
        "sagemaker-runtime",
        region_name=REGION,
        endpoint_url=recorder.url,
        config=AioConfig(retries={"total_max_attempts": 1}),
    ) as client:  # credentials from the chain (the environment), as the router's
        extra = {"Accept": accept} if accept else {}
        with pytest.raises(ClientError):  # the model server is down: InternalFailure
            await client.invoke_endpoint(
                EndpointName="mme-wire",
                TargetModel="acme/intent-v3.tar.gz",
                Body=body,
                ContentType="application/json",
                CustomAttributes="trace=abc",
                InferenceId="req-42",
                **extra,
            )
    # 2. The router, for a tenant whose model is that TargetModel.
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {
            "sm": {
                "kind": "sagemaker",
                "endpoint_name": "mme-wire",
                "region": REGION,
                "endpoint_url": recorder.url,
            }
        }
    )
    cfg.tenant("acme", endpoint="sm", model="acme/intent-v3.tar.gz")
    router = await start_router(cfg)
    headers = {"X-Amzn-SageMaker-Custom-Attributes": "trace=abc", "X-Request-Id": "req-42"}
    if accept:
        headers["Accept"] = accept
    headers["Content-Type"] = "application/json"
    async with router.session.post(
        f"{router.url}/v1/tenants/acme/invocations",
        data=body,
        headers=headers,
        skip_auto_headers=("Accept",),  # no Accept at all when the case has none
    ) as resp:
        assert resp.status == 502  # InternalFailure -> upstream_error

    sdk, ours = recorder.requests
    assert (ours.method, ours.path, ours.body) == (sdk.method, sdk.path, sdk.body)
    assert ours.path == "/endpoints/mme-wire/invocations"
    # The same headers (the SDK's order follows the caller's keyword order, so names are sorted).
    assert sorted(k.lower() for k in ours.headers) == sorted(k.lower() for k in sdk.headers)
    for name, value in sdk.headers.items():
        if name.lower() not in PER_REQUEST:
            assert ours.headers[name] == value, name
    assert ours.headers["X-Amzn-SageMaker-Inference-Id"] == "req-42"
    assert ours.headers["X-Amz-Security-Token"] == "wire-session-token"
    # Same signed headers and scope; the signature is what botocore's own signer computes.
    assert (
        ours.headers["Authorization"].split("Signature=")[0]
        == (sdk.headers["Authorization"].split("Signature=")[0])
    )
    assert ours.headers["Authorization"] == signed_by_botocore(ours, recorder.url)
    assert sdk.headers["Authorization"] == signed_by_botocore(sdk, recorder.url)


async def test_a_tampered_request_does_not_verify(
    tmp_path: Path, recorder: SageMakerFront, start_router: RouterFactory
) -> None:
    """The verification above can fail: change one signed byte and botocore disagrees."""
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {"sm": {"kind": "sagemaker", "endpoint_name": "mme-wire", "region": REGION,
                "endpoint_url": recorder.url}}
    )  # fmt: skip
    cfg.tenant("acme", endpoint="sm", model="m1")
    router = await start_router(cfg)
    await router.invoke("acme", b"{}")
    [ours] = recorder.requests
    tampered = RecordedRequest(
        endpoint_name=ours.endpoint_name,
        target_model=ours.target_model,
        headers=ours.headers,
        body=b"{ }",
        status=ours.status,
        method=ours.method,
        path=ours.path,
    )
    assert ours.headers["Authorization"] == signed_by_botocore(ours, recorder.url)
    assert ours.headers["Authorization"] != signed_by_botocore(tampered, recorder.url)
