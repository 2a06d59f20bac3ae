"""Processing config as operators meet it: ``tenancy check`` names the file and the field of a bad
step, a bad custom import, a bad shadow/fallback/ensemble/selection; a bad edit at reload keeps the
last good version serving; the warm set includes every model a tenant can reach."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tenancy.loader import load_directory
from tenancy.models import Tenant
from tests.router_fixtures import ConfigDir, RouterFactory, v2_body

REPO = Path(__file__).resolve().parent.parent
V2 = {"kind": "v2", "instances": ["http://127.0.0.1:9"]}
STEP_LIST = re.escape("records_to_v2, records_to_csv, csv_to_json, v2_to_json, select,")


async def an_async_function(payload: Any, context: Any) -> Any:
    return payload


def one_argument(payload: Any) -> Any:
    return payload


@pytest.fixture
def config(tmp_path: Path) -> ConfigDir:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"local": V2})
    return cfg


def issues_of(root: Path) -> list[str]:
    return [str(i) for i in load_directory(root)[2]]


def check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenancy", "check", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )


def test_tenancy_check_names_file_and_field_of_bad_steps(config: ConfigDir) -> None:
    config.tenant(
        "acme",
        endpoint="local",
        model="m",
        preprocess=[
            {"step": "records_to_v2", "featurez": ["a"]},
            {"step": "custom", "function": "examples.no_such_module:clip"},
            {"step": "nope"},
        ],
        postprocess=[{"step": "top_k", "k": 0}],
    )
    result = check(config.root)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert "tenants/acme.yaml: preprocess.0.features: Field required" in lines
    assert (
        "tenants/acme.yaml: preprocess.0.featurez: unknown field (did you mean `features`?)"
        in lines
    )
    assert (
        "tenants/acme.yaml: preprocess.1.function: cannot import 'examples.no_such_module': "
        "ModuleNotFoundError: No module named 'examples.no_such_module'" in lines
    )
    assert any(
        re.fullmatch(
            rf"tenants/acme\.yaml: preprocess\.2\.step: unknown step 'nope' \(known: {STEP_LIST}.*",
            line,
        )
        for line in lines
    ), lines
    assert "tenants/acme.yaml: postprocess.0.k: Input should be greater than or equal to 1" in lines
    assert len(lines) == 5, lines


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"preprocess": [{"fields": ["a"]}]},
            "tenants/acme.yaml: preprocess.0.step: Field required",
        ),
        (
            {"preprocess": ["records_to_v2"]},
            "tenants/acme.yaml: preprocess.0: a step is a mapping with a 'step:' name",
        ),
        (
            {"preprocess": [{"step": "custom", "function": "tests.test_processing_config:nothing"}]},
            "tenants/acme.yaml: preprocess.0.function: module 'tests.test_processing_config' "
            "has no attribute 'nothing'",
        ),
        (
            {"preprocess": [{"step": "custom", "function": "tests.test_processing_config:one_argument"}]},
            "tenants/acme.yaml: preprocess.0.function: "
            "'tests.test_processing_config:one_argument' must accept two positional arguments",
        ),
        (
            {"preprocess": [{"step": "custom", "function": "not a reference"}]},
            "tenants/acme.yaml: preprocess.0.function: String should match pattern",
        ),
        (
            {"preprocess": [{"step": "custom", "cpu_heavy": True,
                             "function": "tests.test_processing_config:an_async_function"}]},
            "tenants/acme.yaml: preprocess.0: cpu_heavy runs the function in a thread: "
            "give a plain function",
        ),
        (
            {"preprocess": [{"step": "records_to_csv", "features": ["a"]}, {"step": "select",
                                                                           "fields": ["a"]}]},
            "tenants/acme.yaml: preprocess: step 0: records_to_csv writes the body, so it must be last",
        ),
        (
            {"postprocess": [{"step": "label_map", "labels": {"one": "x"}}]},
            "tenants/acme.yaml: postprocess.0.labels.one.[key]: Input should be a valid integer",
        ),
        (
            {"experiment": {"name": "e", "kind": "ab", "variants": [
                {"name": "a", "model": "m", "weight": 1},
                {"name": "b", "model": "n", "weight": 1, "postprocess": [{"step": "round"}]}]}},
            "tenants/acme.yaml: experiment.variants.1.postprocess.0.digits: Field required",
        ),
        (
            {"shadow": {"model": "s", "percent": 150}},
            "tenants/acme.yaml: shadow.percent: must be at most 100, got 150",
        ),
        (
            {"shadow": {"model": "s", "percent": 5, "tolerance": 0.1,
                        "comparator": "examples.steps:same_top_class"}},
            "tenants/acme.yaml: shadow: give 'tolerance' or 'comparator', not both",
        ),
        (
            {"fallback": {"model": "m"}},
            "tenants/acme.yaml: (root): the fallback model must differ from the tenant's model",
        ),
        (
            {"fallback": {"model": "f", "on": ["upstream_eror"]}},
            "tenants/acme.yaml: fallback.on.0: Input should be 'upstream_error'",
        ),
        (
            {"ensemble": {"models": ["a", "b"], "aggregate": "vote", "min_success": 3}},
            "tenants/acme.yaml: ensemble: min_success 3 is more than the models given",
        ),
        (
            {"ensemble": {"models": ["a", "b"], "aggregate": "custom"}},
            "tenants/acme.yaml: ensemble: 'function' is required with aggregate: custom",
        ),
        (
            {"ensemble": {"models": ["a", "b"], "aggregate": "vote"},
             "select_model": {"field": "k", "models": {"x": "a"}}},
            "tenants/acme.yaml: (root): use one of experiment, select_model, ensemble, "
            "not select_model and ensemble",
        ),
        (
            {"select_model": {"field": "a..b", "models": {"x": "a"}}},
            "tenants/acme.yaml: select_model.field: String should match pattern",
        ),
    ],
)  # fmt: skip
def test_bad_processing_config_is_refused_with_file_and_field(
    config: ConfigDir, fields: dict[str, Any], expected: str
) -> None:
    config.tenant("acme", endpoint="local", model="m", **fields)
    found = issues_of(config.root)
    assert any(line.startswith(expected) for line in found), found
    assert all(line.startswith("tenants/acme.yaml: ") for line in found), found


def test_the_processing_example_directory_is_valid() -> None:
    result = check(REPO / "examples" / "config-processing")
    assert result.returncode == 0, result.stdout
    assert "ok (1 endpoint, 4 tenants)" in result.stdout


def test_the_warm_set_includes_every_model_a_tenant_can_reach() -> None:
    tenant = Tenant.model_validate(
        {
            "endpoint": "e",
            "model": "main",
            "select_model": {
                "field": "k",
                "models": {"a": "sel-a", "b": "main"},
                "default": "sel-d",
            },
            "fallback": {"model": "backup"},
            "shadow": {"model": "candidate", "percent": 1},
        }
    )
    assert tenant.models() == ("main", "sel-a", "sel-d", "backup", "candidate")
    ensemble = Tenant.model_validate(
        {
            "endpoint": "e",
            "model": "a",
            "ensemble": {"models": ["b", "a", "c"], "aggregate": "mean"},
        }
    )
    assert ensemble.models() == ("a", "b", "c")


async def test_a_bad_edit_at_reload_keeps_the_last_good_pipeline(
    tmp_path: Path, fresh_mlservers: list[Any], start_router: RouterFactory
) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers]}})
    good = {"step": "v2_to_json"}
    cfg.tenant("acme", endpoint="mme", model="iris-lr", postprocess=[good])
    router = await start_router(cfg)
    cfg.tenant(
        "acme",
        endpoint="mme",
        model="iris-lr",
        postprocess=[good, {"step": "custom", "function": "no_such_module:f"}],
    )
    outcome = await router.reload()
    assert not outcome["ok"]
    assert router.metric("router_config_reloads_total", result="error") >= 1
    status, _, body = await router.invoke("acme", v2_body([[5.1, 3.5, 1.4, 0.2]]))
    assert (status, orjson.loads(body)) == (200, [0])


async def test_the_example_tenants_answer_on_real_models(
    tmp_path: Path, fresh_mlservers: list[Any], start_router: RouterFactory
) -> None:
    """``examples/config-processing`` as shipped, pointed at the test's MLServer instances."""
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"local-mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers]}})
    for example in sorted((REPO / "examples" / "config-processing" / "tenants").glob("*.yaml")):
        cfg.raw(f"tenants/{example.name}", example.read_text())
    router = await start_router(cfg)
    flower = {"sl": 5.1, "sepal_width": 3.5, "pl": 1.4}
    status, headers, body = await router.invoke(
        "flowers", orjson.dumps([flower]), headers={"X-Request-Id": "ex-1"}
    )
    assert status == 200, body
    answer = orjson.loads(body)
    assert answer["request_id"] == "ex-1"
    (prediction,) = answer["predictions"]
    assert prediction["predict"] == "setosa"
    assert prediction["predict_proba"][0]["label"] == "setosa"
    assert len(prediction["predict_proba"]) == 2

    features = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    status, headers, body = await router.invoke(
        "shop", orjson.dumps([{**features, "product_type": "tree"}])
    )
    assert (status, headers["X-Model-Id"], orjson.loads(body)) == (200, "iris-tree", [0])
    status, headers, body = await router.invoke("committee", v2_body([[5.1, 3.5, 1.4, 0.2]]))
    assert (status, headers["X-Variant"], orjson.loads(body)) == (200, "ensemble", ["setosa"])
    status, headers, _ = await router.invoke("steady", v2_body([[5.1, 3.5, 1.4, 0.2]]))
    assert (status, headers["X-Model-Id"], headers["X-Variant"]) == (200, "iris-tree", "default")


def test_the_benchmark_tenants_are_valid() -> None:
    from bench.pipeline import e2e_tenants

    for tenant in e2e_tenants("mme", "bench-model", {"timeout_ms": 2000}).values():
        Tenant.model_validate(tenant)
