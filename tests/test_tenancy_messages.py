"""``tenancy check`` messages a person can act on without reading the models: a close field name
for a typo, the line a YAML error is really on, a negative weight stated plainly by the check and
by the committed JSON Schema an editor uses."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tenancy.loader import load_directory
from tests.router_fixtures import ConfigDir

REPO = Path(__file__).resolve().parent.parent
V2 = {"kind": "v2", "instances": ["http://127.0.0.1:9"]}
NEGATIVE_WEIGHT = {
    "name": "e",
    "kind": "ab",
    "variants": [
        {"name": "a", "model": "m1", "weight": 1},
        {"name": "b", "model": "m2", "weight": -5},
    ],
}


def issues_of(root: Path) -> list[str]:
    return [str(i) for i in load_directory(root)[2]]


@pytest.fixture
def config(tmp_path: Path) -> ConfigDir:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"local": V2})
    return cfg


def test_near_miss_fields_get_a_suggestion_from_the_same_object(config: ConfigDir) -> None:
    config.endpoints({"local": {**V2, "timeout_mss": 100}})
    config.tenant(
        "acme",
        endpoint="local",
        model="m",
        limits={"timout_ms": 100},
        experiment={**NEGATIVE_WEIGHT, "variants": [{"name": "a", "model": "m", "weigth": 1}]},
        color="blue",
    )
    assert issues_of(config.root) == [
        "endpoints.yaml: endpoints.local.timeout_mss: unknown field (did you mean `timeout_ms`?)",
        "tenants/acme.yaml: limits.timout_ms: unknown field (did you mean `timeout_ms`?)",
        "tenants/acme.yaml: experiment.variants.0.weight: Field required",
        "tenants/acme.yaml: experiment.variants.0.weigth: unknown field (did you mean `weight`?)",
        "tenants/acme.yaml: color: unknown field",
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("endpoint: local\nmodel: [a, b\n", 2, "expected ',' or ']'"),
        ("endpoint: local\nmodel iris-lr\nlimits: {}\n", 2, "could not find expected ':'"),
        ("endpoint: local\nlimits:\n  timeout_ms: 5\n rps: 3\n", 4, "expected <block end>"),
        ("endpoint: 'local\nmodel: m\n\n", 2, "quoted scalar that starts on line 1"),
    ],
)
def test_yaml_errors_name_the_line_the_mistake_is_on(
    config: ConfigDir, text: str, line: int, words: str
) -> None:
    config.raw("tenants/acme.yaml", text)
    (issue,) = issues_of(config.root)
    assert issue.startswith(f"tenants/acme.yaml: line {line}: "), issue
    assert words in issue


def test_negative_weight_is_stated_plainly_by_check_and_schema(config: ConfigDir) -> None:
    config.tenant("acme", endpoint="local", model="m1", experiment=NEGATIVE_WEIGHT)
    assert issues_of(config.root) == [
        "tenants/acme.yaml: experiment.variants.1.weight: must be at least 0, got -5"
    ]
    schema = json.loads((REPO / "schema" / "tenant.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    document = {"endpoint": "local", "model": "m1", "experiment": NEGATIVE_WEIGHT}
    errors = [(list(e.absolute_path), e.message) for e in validator.iter_errors(document)]
    assert errors == [(["experiment", "variants", 1, "weight"], "-5 is less than the minimum of 0")]
    # an optional section may still be written as null
    assert not list(validator.iter_errors({"endpoint": "l", "model": "m", "experiment": None}))
