"""Operational routes and the metric names SPEC.md fixes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from tests.router_fixtures import ConfigDir, RouterFactory, parse_metric_text

SPEC_METRICS = [
    "router_requests_total",
    "router_request_duration_seconds",
    "router_upstream_duration_seconds",
    "router_assignments_total",
    "router_redis_errors_total",
    "router_config_reloads_total",
    "router_cold_starts_total",
]


async def test_health_ready_and_metrics(
    tmp_path: Path, fresh_mlservers: list[Any], start_router: RouterFactory
) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [fresh_mlservers[0].url]}})
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    router = await start_router(cfg)
    async with router.session.get(f"{router.url}/healthz") as resp:
        assert resp.status == 200
    async with router.session.get(f"{router.url}/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ready"
    assert (await router.invoke("globex"))[0] == 200
    async with router.session.get(f"{router.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    for name in ("router_requests_total", "router_cold_starts_total"):
        assert parse_metric_text(text, name) == 1, name
    assert parse_metric_text(text, "router_request_duration_seconds_count") == 1
    assert parse_metric_text(text, "router_upstream_duration_seconds_count") == 1
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    for name in SPEC_METRICS:
        assert name in declared, name
    # The app's registry is its own: nothing leaks into the process-global one.
    assert REGISTRY.get_sample_value("router_requests_total") is None


async def test_admin_routes_need_the_admin_token(
    tmp_path: Path, fresh_mlservers: list[Any], start_router: RouterFactory
) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [fresh_mlservers[0].url]}})
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    router = await start_router(cfg, admin_token="t0k")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with router.session.get(f"{router.url}/v1/admin/tenants", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
    ok = {"Authorization": "Bearer t0k"}
    async with router.session.get(f"{router.url}/v1/admin/tenants", headers=ok) as resp:
        assert resp.status == 200
        assert (await resp.json())["tenants"]["globex"]["model"] == "iris-tree"
