"""The many-models phase of ``make bench-coldstart`` sets up what it claims: a config the loader takes,
more models than one instance holds, a stream both modes share, and the two placements it compares."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bench.coldstart_many import (
    ManySettings,
    build_repository,
    model_names,
    request_stream,
    write_config,
    zipf_weights,
)
from router.placement import ModelDemand, place
from tenancy.loader import load_directory
from tenancy.models import V2Endpoint

URLS = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]


def test_stream_is_deterministic_zipf_over_every_model() -> None:
    models = model_names(12)
    stream = request_stream(models, 4, 3000, 1.1, seed=7)
    assert stream == request_stream(models, 4, 3000, 1.1, seed=7)
    assert stream != request_stream(models, 4, 3000, 1.1, seed=8)
    counts = Counter(model for _, model in stream)
    assert set(counts) == set(models)
    assert counts["m00"] > counts["m01"] > counts["m05"] > counts["m11"]
    assert all(tenant.endswith(f"-{model}") for tenant, model in stream)
    assert {tenant.split("-")[0] for tenant, _ in stream} == {"t0", "t1", "t2", "t3"}
    weights = zipf_weights(12, 1.1)
    assert abs(sum(weights) - 1.0) < 1e-9
    assert weights == sorted(weights, reverse=True)


def test_config_loads_and_the_two_modes_place_as_the_bench_says(tmp_path: Path) -> None:
    settings = ManySettings()
    placements = {}
    for mode in ("replicate", "spread"):
        write_config(tmp_path / "cfg", "many", URLS, mode, settings)
        endpoints, tenants, issues = load_directory(tmp_path / "cfg")
        assert issues == []
        assert len(tenants) == settings.models * settings.tenants_per_model
        endpoint = endpoints["many"]
        assert isinstance(endpoint, V2Endpoint)
        assert endpoint.placement.mode == mode
        demand = zipf_weights(settings.models, settings.zipf_s)
        placements[mode] = place(
            [
                ModelDemand(m, demand=round(w * 1000))
                for m, w in zip(model_names(settings.models), demand, strict=True)
            ],
            dict.fromkeys(URLS, endpoint.capacity),
            endpoint.placement,
        )
    replicate, spread = placements["replicate"], placements["spread"]
    # today: the same five top models on every instance, seven models nowhere
    assert {replicate.models_on(u) for u in URLS} == {frozenset(model_names(5))}
    assert len(replicate.unplaced) == 7
    # placement: every model somewhere, the busiest on more than one instance
    assert spread.unplaced == ()
    held = set().union(*(spread.models_on(u) for u in URLS))
    assert held == set(model_names(settings.models))
    assert sum("m00" in spread.models_on(u) for u in URLS) >= 2


def test_repository_names_each_copy_after_its_folder(tmp_path: Path) -> None:
    source = tmp_path / "trained"
    for name in ("iris-lr", "iris-tree", "iris-knn"):
        (source / name).mkdir(parents=True)
        (source / name / "model.joblib").write_bytes(name.encode())
    root = build_repository(source, tmp_path / "repo", model_names(4))
    for index, name in enumerate(model_names(4)):
        settings = json.loads((root / name / "model-settings.json").read_text())
        assert settings["name"] == name
        expected = ("iris-lr", "iris-tree", "iris-knn")[index % 3]
        assert (root / name / "model.joblib").read_bytes() == expected.encode()
