"""Hot reload as the router serves: edits, broken files, in-flight requests, the admin route."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.router_fixtures import ConfigDir, RouterFactory, eventually


@pytest.fixture
def config(tmp_path: Path, fresh_mlservers: list[Any]) -> ConfigDir:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers]}})
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    return cfg


async def test_valid_edit_serves_within_two_seconds(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    assert (await router.invoke("globex"))[1]["X-Model-Id"] == "iris-tree"
    config.tenant("globex", endpoint="mme", model="iris-knn")

    async def switched() -> bool:
        return (await router.invoke("globex"))[1]["X-Model-Id"] == "iris-knn"

    await eventually(switched, within_s=2.0)
    assert router.metric("router_config_reloads_total", result="ok") >= 1


async def test_broken_file_keeps_the_last_good_version(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    config.raw("tenants/globex.yaml", "endpoint: mme\nmodel: iris-knn\nlimits: {rps: -1}\n")

    async def counted() -> bool:
        return router.metric("router_config_reloads_total", result="error") >= 1

    await eventually(counted, within_s=2.0)
    status, headers, _ = await router.invoke("globex")
    assert (status, headers["X-Model-Id"]) == (200, "iris-tree")


async def test_request_in_flight_finishes_on_its_snapshot(
    config: ConfigDir, start_router: RouterFactory, fresh_mlservers: list[Any]
) -> None:
    router = await start_router(config)
    assert (await router.invoke("globex"))[0] == 200
    assert (await router.invoke("globex"))[0] == 200  # warm on both instances
    for instance in fresh_mlservers:
        instance.pause()
    try:
        in_flight = asyncio.create_task(router.invoke("globex"))
        await asyncio.sleep(0.2)
        config.tenant("globex", endpoint="mme", model="iris-knn")
        outcome = await router.reload()
        assert outcome["ok"]
    finally:
        for instance in fresh_mlservers:
            instance.resume()
    status, headers, _ = await in_flight
    assert (status, headers["X-Model-Id"]) == (200, "iris-tree")
    assert (await router.invoke("globex"))[1]["X-Model-Id"] == "iris-knn"


async def test_admin_reload_reports_problems_and_needs_the_token(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config, admin_token="s3cret")
    async with router.session.post(f"{router.url}/v1/admin/reload") as resp:
        assert resp.status == 401
    config.raw("tenants/bad.yaml", "endpoint: mme\n")
    outcome = await router.reload("s3cret")
    assert outcome["ok"] is False
    assert outcome["issues"] == ["tenants/bad.yaml: model: Field required"]
    config.tenant(
        "initech",
        endpoint="mme",
        model="diabetes-lr",
        postprocess=[{"step": "v2_to_json"}],
        fallback={"model": "iris-lr"},
    )
    outcome = await router.reload("s3cret")
    headers = {"Authorization": "Bearer s3cret"}
    async with router.session.get(f"{router.url}/v1/admin/tenants", headers=headers) as resp:
        tenants = (await resp.json())["tenants"]
    assert set(tenants) == {"globex", "initech"}
    assert tenants["initech"]["model"] == "diabetes-lr"
    assert tenants["initech"]["backend"]["kind"] == "v2"
    assert "processing" not in tenants["globex"]
    assert tenants["initech"]["processing"]["fallback"]["model"] == "iris-lr"
    assert tenants["initech"]["processing"]["postprocess"][0]["step"] == "v2_to_json"


async def test_deleted_tenant_is_gone(config: ConfigDir, start_router: RouterFactory) -> None:
    config.tenant("initech", endpoint="mme", model="diabetes-lr")
    router = await start_router(config)
    config.remove("initech")
    await router.reload()
    assert (await router.invoke("initech"))[0] == 404
