"""Three MLServer instances over a repository of more models than one instance may hold.

The repository has ``MANY`` models (``m0`` ... ``m7``), each a copy of the iris logistic regression
under its own name, so placement has something to spread. The instances live for the module and
are emptied (and restarted if a test killed one) before each test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import mlserver as mls
from tests.preloader_fixtures import IRIS_SAMPLE, v2_endpoint
from tests.router_fixtures import ConfigDir

MANY = tuple(f"m{i}" for i in range(8))
STARTUP_S = 180.0  # a shared 2-core machine under load starts MLServer slowly
Trio = tuple[mls.MLServerInstance, mls.MLServerInstance, mls.MLServerInstance]


def many_models_repository(models_dir: Path, root: Path) -> Path:
    source = models_dir / "iris-lr" / "model.joblib"
    for name in MANY:
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "model.joblib").symlink_to(source.resolve())
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {
                "uri": "./model.joblib",
                "version": "v1",
                "extra": {"method": "predict"},
            },
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
    return root


@pytest.fixture(scope="module")
def mlserver_trio(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    base = tmp_path_factory.mktemp("trio")
    repository = many_models_repository(models_dir, base / "models")
    instances: list[mls.MLServerInstance] = []
    try:
        for name in ("a", "b", "c"):
            instances.append(mls.start_mlserver(repository, base / name, wait=False))
        for instance in instances:
            instance.wait_ready(timeout=STARTUP_S)
        yield instances[0], instances[1], instances[2]
    finally:
        for instance in instances:
            instance.stop()


@pytest.fixture
def trio(mlserver_trio: Trio) -> Trio:
    for instance in mlserver_trio:
        if instance.paused:
            instance.resume()
        if not instance.is_alive():
            instance.restart(timeout=STARTUP_S)
        instance.unload_all()
    return mlserver_trio


def many_tenants(cfg: ConfigDir, urls: list[str], **endpoint: object) -> None:
    """One tenant per model (``t0`` uses ``m0``...), on endpoint ``mme``."""
    cfg.endpoints({"mme": v2_endpoint(urls, **endpoint)})
    for index, model in enumerate(MANY):
        cfg.tenant(f"t{index}", endpoint="mme", model=model, preload={"sample": IRIS_SAMPLE})
