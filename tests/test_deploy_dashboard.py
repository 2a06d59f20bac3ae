"""The Grafana dashboard and the deploy guide, checked offline.

Every PromQL expression is parsed with a real PromQL parser (Grafana's variables substituted
first), and every metric it selects must be one the router exposes (read from the router's own
registry) or one SPEC.md names for the preloader. Every SPEC metric must be on the dashboard.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry

from router.metrics import RouterMetrics

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "dashboards" / "warmroute.json"
GUIDE = REPO / "README.md"
DATASOURCE = "${datasource}"

# SPEC.md, "Data plane (router)", Metrics: the preloader's names.
SPEC_PRELOADER_METRICS = {
    "preloader_models_warm",
    "preloader_warm_duration_seconds_bucket",
    "preloader_warm_duration_seconds_sum",
    "preloader_warm_duration_seconds_count",
    "preloader_warm_failures_total",
}
# SPEC's metric names (base names: a histogram counts when any of its series is used), plus the
# router's model loads, which the dashboard must show.
REQUIRED = {
    "router_requests_total",
    "router_request_duration_seconds",
    "router_upstream_duration_seconds",
    "router_assignments_total",
    "router_redis_errors_total",
    "router_config_reloads_total",
    "router_cold_starts_total",
    "router_model_loads_total",
    "router_rollout_weight",
    "router_rollout_events_total",
    "preloader_models_warm",
    "preloader_warm_duration_seconds",
    "preloader_warm_failures_total",
    "preloader_placed_models",
    "preloader_copies",
    "preloader_unloads_total",
    "preloader_model_age_at_unload_seconds",
    "router_ondemand_loads_total",
}
# Grafana's variables, replaced by something PromQL accepts before parsing.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
}

Obj = dict[str, Any]


def series_names(registry: CollectorRegistry) -> set[str]:
    """Series names a registry exposes (counters end in _total, histograms in
    _bucket/_sum/_count), even for label sets that have not been used yet."""
    found = set()
    for family in registry.collect():
        if family.type == "counter":
            found.add(f"{family.name}_total")
        elif family.type == "histogram":
            found.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            found.add(family.name)
    return found


def preloader_metrics() -> set[str]:
    """The preloader's own registry where its metrics module exists, else SPEC's names."""
    try:
        module = importlib.import_module("preloader.metrics")
    except ModuleNotFoundError:
        return SPEC_PRELOADER_METRICS
    registry: CollectorRegistry = module.PreloaderMetrics().registry
    return series_names(registry)


def exposed_metrics() -> set[str]:
    return series_names(RouterMetrics().registry) | preloader_metrics()


def load() -> Obj:
    dashboard: Obj = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: Obj) -> list[Obj]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    # Dashboard variables ($tenant, ${endpoint}) sit inside regex matchers: any value will do.
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def selected_metrics(expr: str) -> set[str]:
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    return found


def base_name(metric: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", metric)


def test_the_preloader_exposes_what_spec_names() -> None:
    missing = SPEC_PRELOADER_METRICS - preloader_metrics()
    assert not missing, f"SPEC names preloader metrics it does not expose: {sorted(missing)}"


def test_dashboard_is_json_with_a_prometheus_datasource_variable() -> None:
    dashboard = load()
    assert dashboard["uid"] == "warmroute"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    for panel in panels(load()):
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    dashboard = load()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_parses_and_selects_only_exposed_metrics() -> None:
    known = exposed_metrics()
    used: set[str] = set()
    for panel in panels(load()):
        for target in panel["targets"]:
            try:
                selected = selected_metrics(target["expr"])
            except ValueError as exc:
                pytest.fail(f"{panel['title']}: {target['expr']!r} does not parse: {exc}")
            assert selected, f"{panel['title']}: {target['expr']!r} selects no metric"
            unknown = selected - known
            assert not unknown, f"{panel['title']}: no such metric {sorted(unknown)}"
            used |= selected
    missing = REQUIRED - {base_name(m) for m in used} - used
    assert not missing, f"SPEC metrics not on the dashboard: {sorted(missing)}"


def test_variable_queries_name_exposed_metrics() -> None:
    known = exposed_metrics()
    for variable in load()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        assert match.group(1) in known, variable["name"]


def test_the_parser_refuses_what_prometheus_would() -> None:
    """The PromQL check is not vacuous."""
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum by (tenant (rate(router_requests_total[1m]))")
    with pytest.raises(ValueError, match="brackets"):
        promql_parser.parse("rate(router_requests_total[$__rate_interval])")
    assert selected_metrics('rate(router_requests_total{tenant=~"$tenant"}[$__rate_interval])') == {
        "router_requests_total"
    }


def test_deploy_guide_names_only_paths_that_exist() -> None:
    text = GUIDE.read_text()
    paths = set(re.findall(r"\b((?:k8s|dashboards|examples|docs)/[\w./-]*\w)", text))
    assert paths, "the guide names no file"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"README.md names missing paths: {missing}"
    for overlay in ("cluster", "sidecar", "mme-sidecar"):
        assert f"k8s/overlays/{overlay}" in text, f"the guide does not cover {overlay}"
    for permission in ("sagemaker:InvokeEndpoint", "sagemaker:DescribeEndpoint"):
        assert permission in text
    policies = re.findall(r"```json\n(.*?)```", text, re.S)
    assert policies, "no IAM policy JSON in the guide"
    for policy in policies:
        json.loads(policy)
