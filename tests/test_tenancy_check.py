"""``python -m tenancy check`` and the validation rules, as operators meet them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tenancy.loader import load_directory
from tenancy.schema import SCHEMA_FILES, render
from tests.router_fixtures import ConfigDir

REPO = Path(__file__).resolve().parent.parent
V2 = {"kind": "v2", "instances": ["http://127.0.0.1:9"]}


def check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenancy", "check", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )


def issues_of(root: Path) -> list[str]:
    return [str(i) for i in load_directory(root)[2]]


@pytest.fixture
def config(tmp_path: Path) -> ConfigDir:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"local": V2})
    return cfg


def test_examples_directory_is_valid() -> None:
    result = check(REPO / "examples" / "config")
    assert result.returncode == 0, result.stdout
    assert "ok" in result.stdout


def test_invalid_directory_exits_1_with_one_line_per_problem(config: ConfigDir) -> None:
    config.tenant("acme", endpoint="local", model="m", limitz={})
    config.raw("tenants/broken.yaml", "endpoint: local\nmodel: [a, b\n")
    result = check(config.root)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert "tenants/acme.yaml: limitz: unknown field (did you mean `limits`?)" in lines
    assert any(line.startswith("tenants/broken.yaml: line ") for line in lines), lines
    assert len(lines) == 2


def test_list_items_are_addressed_by_index(config: ConfigDir) -> None:
    config.tenant(
        "acme",
        endpoint="local",
        model="m1",
        experiment={
            "name": "e",
            "kind": "ab",
            "variants": [
                {"name": "a", "model": "m1", "weight": 1},
                {"name": "b", "model": "m2", "weight": -5},
            ],
        },
    )
    assert issues_of(config.root) == [
        "tenants/acme.yaml: experiment.variants.1.weight: must be at least 0, got -5"
    ]


@pytest.mark.parametrize(
    ("experiment", "message"),
    [
        (
            {"kind": "canary", "variants": [{"name": "control", "model": "m1", "weight": 1}]},
            "a canary has exactly two variants",
        ),
        (
            {
                "kind": "ab",
                "variants": [
                    {"name": "a", "model": "m1", "weight": 0},
                    {"name": "b", "model": "m2", "weight": 0},
                ],
            },
            "all variant weights are zero",
        ),
        (
            {
                "kind": "ab",
                "variants": [
                    {"name": "a", "model": "m1", "weight": 1},
                    {"name": "a", "model": "m2", "weight": 1},
                ],
            },
            "duplicate variant names: a",
        ),
        (
            {
                "kind": "ab",
                "variants": [
                    {"name": "a", "model": "m1", "weight": 1},
                    {"name": "b", "model": "m2", "weight": 1},
                ],
                "overrides": {"c": ["u1"]},
            },
            "override names unknown variant 'c'",
        ),
        (
            {
                "kind": "ab",
                "variants": [
                    {"name": "a", "model": "m1", "weight": 1},
                    {"name": "b", "model": "m2", "weight": 1},
                ],
                "overrides": {"a": ["u1"], "b": ["u1"]},
            },
            "unit 'u1' is overridden twice",
        ),
    ],
)
def test_experiment_rules(config: ConfigDir, experiment: dict[str, object], message: str) -> None:
    config.tenant("acme", endpoint="local", model="m1", experiment={"name": "e", **experiment})
    found = issues_of(config.root)
    assert len(found) == 1
    assert found[0].startswith("tenants/acme.yaml: experiment: ")
    assert message in found[0]


def test_unknown_endpoint_is_named(config: ConfigDir) -> None:
    config.tenant("acme", endpoint="nowhere", model="m")
    assert issues_of(config.root) == [
        "tenants/acme.yaml: endpoint: unknown endpoint 'nowhere' (known: local)"
    ]


def test_endpoint_needs_exactly_one_instance_source(config: ConfigDir) -> None:
    config.endpoints({"local": {"kind": "v2"}, "sm": {"kind": "sagemaker", "region": "x"}})
    found = issues_of(config.root)
    assert any(
        i.startswith("endpoints.yaml: endpoints.local: ") and "exactly one" in i for i in found
    )
    assert (
        "endpoints.yaml: endpoints.sm: give exactly one of 'endpoint_name' or 'endpoint_names' "
        "(a list)" in found
    )


def test_missing_endpoints_file(tmp_path: Path) -> None:
    (tmp_path / "tenants").mkdir()
    result = check(tmp_path)
    assert result.returncode == 1
    assert result.stdout.strip() == "endpoints.yaml: (file): file not found"


def test_api_key_hashes_must_be_sha256_hex(config: ConfigDir) -> None:
    config.tenant("acme", endpoint="local", model="m", auth={"api_key_sha256": ["plaintext"]})
    found = issues_of(config.root)
    assert len(found) == 1
    assert found[0].startswith("tenants/acme.yaml: auth.api_key_sha256.0: ")


@pytest.mark.parametrize("name", list(SCHEMA_FILES))
def test_committed_json_schema_is_current(name: str) -> None:
    committed = (REPO / "schema" / name).read_bytes()
    assert committed == render(SCHEMA_FILES[name]), "run `make schema` and commit schema/"


@pytest.mark.parametrize(
    ("placement", "where", "message"),
    [
        (
            {"min_copies": 3, "max_copies": 2},
            "placement",
            "min_copies (3) must not exceed max_copies (2)",
        ),
        ({"headroom": 1}, "placement.headroom", "less than 1"),
        ({"mode": "scatter"}, "placement.mode", "'auto', 'replicate' or 'spread'"),
        ({"copies": 2}, "placement.copies", "unknown field"),
    ],
)
def test_placement_rules(
    config: ConfigDir, placement: dict[str, object], where: str, message: str
) -> None:
    config.endpoints({"local": {**V2, "placement": placement}})
    found = issues_of(config.root)
    assert len(found) == 1, found
    assert found[0].startswith(f"endpoints.yaml: endpoints.local.{where}: "), found
    assert message in found[0]
