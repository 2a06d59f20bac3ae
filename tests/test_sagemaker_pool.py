"""A SageMaker pool (``endpoint_names``): each model is invoked only on the member that ranks first for
it (router/placement.py's rendezvous ranking), so each member sees its share of the models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from router.placement import rank
from tests.conftest import MLServerPair
from tests.router_fixtures import ConfigDir, RouterFactory
from tests.support.sagemaker_front import SageMakerFront, start_sagemaker_front
from tests.test_tenancy_check import issues_of

MEMBERS = ("pool-a", "pool-b")
MODELS = ("iris-lr", "iris-tree", "iris-knn")
SLOW_OK = {"timeout_ms": 30000}  # a first load on a busy machine can take seconds


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest_asyncio.fixture
async def fronts(fresh_mlservers: MLServerPair) -> AsyncIterator[dict[str, SageMakerFront]]:
    """Two SageMaker endpoints, one per pool member (each over its own MLServer)."""
    started: dict[str, SageMakerFront] = {}
    try:
        for member, mlserver in zip(MEMBERS, fresh_mlservers, strict=True):
            started[member] = await start_sagemaker_front(mlserver.url, endpoint_name=member)
        yield started
    finally:
        for front in started.values():
            await front.close()


async def test_each_model_goes_only_to_its_member(
    tmp_path: Path, fronts: dict[str, SageMakerFront], start_router: RouterFactory
) -> None:
    # Both members answer on one URL in real AWS; here each has its own, so the router's endpoint
    # names the pool and the test checks where each model's requests landed by endpoint name.
    a, b = fronts["pool-a"], fronts["pool-b"]
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {
            "pool-on-a": {"kind": "sagemaker", "endpoint_names": list(MEMBERS),
                          "region": "us-east-1", "endpoint_url": a.url, **SLOW_OK},
            "pool-on-b": {"kind": "sagemaker", "endpoint_names": list(MEMBERS),
                          "region": "us-east-1", "endpoint_url": b.url, **SLOW_OK},
        }
    )  # fmt: skip
    for model in MODELS:
        # Send each model to the front named like its member, so a wrong choice shows as a
        # ValidationError ("endpoint not found") from the other front.
        home = rank(model, MEMBERS)[0]
        endpoint = "pool-on-a" if home == "pool-a" else "pool-on-b"
        cfg.tenant(f"t-{model}", endpoint=endpoint, model=model, limits=SLOW_OK)
    router = await start_router(cfg)
    for model in MODELS:
        for _ in range(2):
            status, _, body = await router.invoke(f"t-{model}")
            assert status == 200, body  # the other member would answer "endpoint not found"
    for member, front in fronts.items():
        assert {r.endpoint_name for r in front.requests} <= {member}
        assert {r.target_model for r in front.requests} == {
            m for m in MODELS if rank(m, MEMBERS)[0] == member
        }
        assert set(front.load_counts) <= {m for m in MODELS if rank(m, MEMBERS)[0] == member}


async def test_routing_follows_the_ranking_for_many_models(
    tmp_path: Path, start_router: RouterFactory
) -> None:
    """Without a model server (the front answers InternalFailure, but records every call): 40
    models over a three-member pool, each model's calls on its first-ranked member only."""
    members = ("pool-a", "pool-b", "pool-c")
    front = await start_sagemaker_front("http://127.0.0.1:9", endpoint_name="unused")
    try:
        cfg = ConfigDir(tmp_path / "cfg")
        cfg.endpoints(
            {"pool": {"kind": "sagemaker", "endpoint_names": list(members),
                      "region": "us-east-1", "endpoint_url": front.url}}
        )  # fmt: skip
        models = [f"model-{i}" for i in range(40)]
        for model in models:
            cfg.tenant(f"t-{model}", endpoint="pool", model=model)
        router = await start_router(cfg)
        for model in models:
            await router.invoke(f"t-{model}")
            await router.invoke(f"t-{model}")
        landed = {(r.target_model, r.endpoint_name) for r in front.requests}
        assert landed == {(m, rank(m, members)[0]) for m in models}
        assert {name for _, name in landed} == set(members)  # every member holds a share
    finally:
        await front.close()


def test_pool_config_needs_exactly_one_of_name_and_names(tmp_path: Path) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {"both": {"kind": "sagemaker", "endpoint_name": "x", "endpoint_names": ["a", "b"],
                  "region": "us-east-1"}}
    )  # fmt: skip
    cfg.tenant("t", endpoint="both", model="m")
    lines = issues_of(cfg.root)
    assert any("exactly one of 'endpoint_name' or 'endpoint_names'" in line for line in lines)
