"""The sagemaker backend: wire behaviour against moto, real inference through a SageMaker-compatible
front over MLServer, and SageMaker's errors mapped to SPEC's codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.router_fixtures import (
    ConfigDir,
    RouterFactory,
    model_predict,
    output_data,
    v2_body,
)
from tests.support.moto_server import MotoServer, queue_sagemaker_results
from tests.support.sagemaker_front import SageMakerFront


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials come from the standard chain (here: the environment), never from config."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def sagemaker_config(root: Path, url: str, endpoint_name: str) -> ConfigDir:
    cfg = ConfigDir(root)
    cfg.endpoints(
        {
            "sm": {
                "kind": "sagemaker",
                "endpoint_name": endpoint_name,
                "region": "us-east-1",
                "endpoint_url": url,
                "timeout_ms": 30000,  # a first load on a busy machine can take seconds
            }
        }
    )
    cfg.tenant("acme", endpoint="sm", model="iris-lr.tar.gz", limits={"timeout_ms": 30000})
    return cfg


async def test_moto_accepts_the_routers_invocation(
    tmp_path: Path, moto: MotoServer, start_router: RouterFactory
) -> None:
    moto.reset()
    router = await start_router(sagemaker_config(tmp_path / "cfg", moto.url, "mme-prod"))
    await queue_sagemaker_results(
        moto.url, [{"Body": '{"predictions": [1]}', "ContentType": "application/json"}]
    )
    status, headers, answer = await router.invoke(
        "acme",
        b'{"instances": [[1, 2, 3]]}',
        headers={"Accept": "application/json", "X-Request-Id": "r-1"},
    )
    assert status == 200, answer
    assert orjson.loads(answer) == {"predictions": [1]}
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Model-Id"] == "iris-lr.tar.gz"


async def test_real_inference_through_a_sagemaker_front(
    tmp_path: Path, sagemaker_front: SageMakerFront, start_router: RouterFactory, models_dir: Path
) -> None:
    router = await start_router(sagemaker_config(tmp_path / "cfg", sagemaker_front.url, "mme-test"))
    rows = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]]
    for _ in range(3):
        status, _, body = await router.invoke("acme", v2_body(rows))
        assert status == 200, body
        assert output_data(body) == model_predict(models_dir, "iris-lr", rows)
    assert (
        sagemaker_front.load_counts["iris-lr.tar.gz"] + sagemaker_front.load_counts["iris-lr"] == 1
    )
    assert [r.target_model for r in sagemaker_front.requests] == ["iris-lr.tar.gz"] * 3


@pytest.mark.parametrize(
    ("tenant", "body", "status", "code"),
    [
        ("acme", b"not json", 400, "invalid_request"),  # MLServer 422 -> ModelError(422)
        ("acme", v2_body([[1.0, 2.0]]), 502, "upstream_error"),  # MLServer 500 -> ModelError(500)
        ("missing", None, 502, "upstream_error"),  # ValidationError: cannot download the model
        ("elsewhere", None, 502, "upstream_error"),  # ValidationError: endpoint not found
    ],
)
async def test_sagemaker_errors_map_to_spec_codes(
    tmp_path: Path,
    sagemaker_front: SageMakerFront,
    start_router: RouterFactory,
    tenant: str,
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    cfg = sagemaker_config(tmp_path / "cfg", sagemaker_front.url, "mme-test")
    endpoints: dict[str, Any] = {
        "sm": {"kind": "sagemaker", "endpoint_name": "mme-test", "region": "us-east-1",
               "endpoint_url": sagemaker_front.url},
        "gone": {"kind": "sagemaker", "endpoint_name": "mme-gone", "region": "us-east-1",
                 "endpoint_url": sagemaker_front.url},
    }  # fmt: skip
    cfg.endpoints(endpoints)
    cfg.tenant("missing", endpoint="sm", model="no-such-model.tar.gz")
    cfg.tenant("elsewhere", endpoint="gone", model="iris-lr.tar.gz")
    router = await start_router(cfg)
    got, _, answer = await router.invoke(tenant, body)
    assert got == status, answer
    assert orjson.loads(answer)["error"]["code"] == code


async def test_throttling_is_503_overloaded_with_retry_after(
    tmp_path: Path, sagemaker_front: SageMakerFront, start_router: RouterFactory
) -> None:
    router = await start_router(sagemaker_config(tmp_path / "cfg", sagemaker_front.url, "mme-test"))
    sagemaker_front.throttle_next(1)
    status, headers, body = await router.invoke("acme")
    assert status == 503, body
    assert orjson.loads(body)["error"]["code"] == "overloaded"
    assert headers["Retry-After"] == "1"
    # No SDK retry hid the throttle: exactly one call reached the endpoint.
    assert len(sagemaker_front.requests) == 1
    assert (await router.invoke("acme"))[0] == 200
