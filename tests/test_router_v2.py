"""Routing to a real v2 multi-model server (two MLServer instances): inference and lazy loading."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.router_fixtures import (
    ConfigDir,
    RouterFactory,
    model_predict,
    output_data,
    sha,
    v2_body,
)

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1]]
DIABETES_ROWS = [[0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]]


@pytest.fixture
def config(tmp_path: Path, fresh_mlservers: list[Any]) -> ConfigDir:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers]}})
    cfg.tenant("acme", endpoint="mme", model="iris-lr", auth={"api_key_sha256": [sha("acme-key")]})
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    cfg.tenant("initech", endpoint="mme", model="diabetes-lr")
    return cfg


async def test_output_equals_the_models_own(
    config: ConfigDir, start_router: RouterFactory, models_dir: Path
) -> None:
    router = await start_router(config)
    for tenant, model, rows, key in [
        ("acme", "iris-lr", IRIS_ROWS, "acme-key"),
        ("globex", "iris-tree", IRIS_ROWS, None),
        ("initech", "diabetes-lr", DIABETES_ROWS, None),
    ]:
        status, headers, body = await router.invoke(tenant, v2_body(rows), key=key)
        assert status == 200, body
        assert headers["X-Model-Id"] == model
        assert headers["X-Variant"] == "default"
        assert output_data(body) == pytest.approx(model_predict(models_dir, model, rows))


async def test_request_id_is_echoed_or_generated(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    status, headers, body = await router.invoke("globex", headers={"X-Request-Id": "req-123"})
    assert status == 200, (body, headers)
    assert headers["X-Request-Id"] == "req-123", headers
    _, generated, _ = await router.invoke("globex")
    assert len(generated["X-Request-Id"]) >= 16


async def test_a_model_held_nowhere_is_loaded_on_one_instance(
    config: ConfigDir, start_router: RouterFactory, fresh_mlservers: list[Any]
) -> None:
    """SPEC "Placement" 4: loaded on demand on ONE instance (the first of the model's ranking with
    room), never on all of them; later requests go where it is."""
    router = await start_router(config)
    assert all("iris-tree" not in m.loaded_models() for m in fresh_mlservers)
    for _ in range(6):
        status, _, body = await router.invoke("globex")
        assert status == 200, body
    assert router.metric("router_cold_starts_total", tenant="globex", model="iris-tree") == 1
    assert router.metric("router_model_loads_total", model="iris-tree") == 1
    assert router.metric("router_ondemand_loads_total", endpoint="mme") == 1
    assert sum("iris-tree" in m.loaded_models() for m in fresh_mlservers) == 1


async def test_concurrent_requests_for_a_cold_model_share_one_load(
    config: ConfigDir, start_router: RouterFactory, fresh_mlservers: list[Any]
) -> None:
    router = await start_router(config)
    results = await asyncio.gather(
        *(router.invoke("initech", v2_body(DIABETES_ROWS)) for _ in range(24))
    )
    assert [status for status, _, _ in results] == [200] * 24
    # One load on one instance, however many requests waited on it.
    assert router.metric("router_model_loads_total", model="diabetes-lr") == 1
    cold = router.metric("router_cold_starts_total", tenant="initech", model="diabetes-lr")
    assert 1 <= cold <= 24
    assert sum("diabetes-lr" in m.loaded_models() for m in fresh_mlservers) == 1


async def test_unreachable_instance_is_skipped(
    tmp_path: Path, fresh_mlservers: list[Any], start_router: RouterFactory
) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {"mme": {"kind": "v2", "instances": ["http://127.0.0.1:9", fresh_mlservers[0].url]}}
    )
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    router = await start_router(cfg)
    statuses = [(await router.invoke("globex"))[0] for _ in range(6)]
    assert statuses == [200] * 6
