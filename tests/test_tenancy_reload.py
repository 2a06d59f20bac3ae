"""Hot reload at the store level: whole new snapshots, last good version on error, ConfigMap swaps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tenancy.store import ConfigError, ConfigStore, ReloadOutcome
from tests.router_fixtures import ConfigDir

V2 = {"kind": "v2", "instances": ["http://127.0.0.1:9"]}


@pytest.fixture
def config(tmp_path: Path) -> ConfigDir:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"local": V2})
    cfg.tenant("acme", endpoint="local", model="m1")
    cfg.tenant("globex", endpoint="local", model="g1")
    return cfg


@contextlib.asynccontextmanager
async def watching(store: ConfigStore) -> AsyncIterator[list[ReloadOutcome]]:
    outcomes: list[ReloadOutcome] = []
    store.on_reload = outcomes.append
    task = asyncio.create_task(store.watch(0.1))
    try:
        yield outcomes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: object, limit_s: float = 2.0) -> float:
    """Seconds until ``predicate()`` is true; fails past ``timeout`` (SPEC: changes within 2 s)."""
    assert callable(predicate)
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < limit_s, "not picked up within 2 s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_invalid_config_at_start_is_fatal(config: ConfigDir) -> None:
    config.raw("tenants/acme.yaml", "endpoint: local\nmodel: m1\ntimeout: 3\n")
    store = ConfigStore(config.root)
    with pytest.raises(ConfigError) as caught:
        store.load_initial()
    assert [str(i) for i in caught.value.issues] == ["tenants/acme.yaml: timeout: unknown field"]


async def test_valid_edit_is_picked_up(config: ConfigDir) -> None:
    store = ConfigStore(config.root)
    first = store.load_initial()
    async with watching(store) as outcomes:
        config.tenant("acme", endpoint="local", model="m2")
        await until(lambda: store.current.tenants["acme"].model == "m2")
    assert store.current is not first
    assert first.tenants["acme"].model == "m1"  # the old snapshot is untouched
    assert outcomes[-1].ok


async def test_broken_file_keeps_last_good_version(config: ConfigDir) -> None:
    store = ConfigStore(config.root)
    store.load_initial()
    async with watching(store) as outcomes:
        config.raw("tenants/acme.yaml", "endpoint: local\nmodel: [oops\n")
        config.tenant("globex", endpoint="local", model="g2")
        await until(lambda: store.current.tenants["globex"].model == "g2")
    assert store.current.tenants["acme"].model == "m1"
    assert not outcomes[-1].ok
    assert str(outcomes[-1].issues[0]).startswith("tenants/acme.yaml: line ")


async def test_new_tenant_with_an_error_is_not_served(config: ConfigDir) -> None:
    store = ConfigStore(config.root)
    store.load_initial()
    config.tenant("initech", endpoint="nowhere", model="x")
    outcome = await store.reload()
    assert "initech" not in outcome.snapshot.tenants
    assert [str(i) for i in outcome.issues] == [
        "tenants/initech.yaml: endpoint: unknown endpoint 'nowhere' (known: local)"
    ]


async def test_deleting_a_file_removes_the_tenant(config: ConfigDir) -> None:
    store = ConfigStore(config.root)
    store.load_initial()
    async with watching(store):
        config.remove("globex")
        await until(lambda: "globex" not in store.current.tenants)
    assert "acme" in store.current.tenants


async def test_broken_endpoints_file_keeps_serving(config: ConfigDir) -> None:
    store = ConfigStore(config.root)
    store.load_initial()
    config.raw("endpoints.yaml", "endpoints: {local: {kind: v3}}\n")
    outcome = await store.reload()
    assert not outcome.ok
    assert set(outcome.snapshot.tenants) == {"acme", "globex"}
    assert "local" in outcome.snapshot.endpoints


def _configmap_version(root: Path, name: str, model: str) -> Path:
    version = root / name
    (version / "tenants").mkdir(parents=True)
    (version / "endpoints.yaml").write_text(yaml.safe_dump({"endpoints": {"local": V2}}))
    (version / "tenants" / "acme.yaml").write_text(
        yaml.safe_dump({"endpoint": "local", "model": model})
    )
    return version


async def test_kubernetes_configmap_symlink_swap(tmp_path: Path) -> None:
    """The kubelet's atomic writer: files are symlinks through ``..data``, which is swapped whole."""
    root = tmp_path / "mounted"
    root.mkdir()
    _configmap_version(root, "..2026_11_21_v1", "m1")
    os.symlink("..2026_11_21_v1", root / "..data")
    os.symlink("..data/endpoints.yaml", root / "endpoints.yaml")
    os.symlink("..data/tenants", root / "tenants")
    store = ConfigStore(root)
    assert store.load_initial().tenants["acme"].model == "m1"

    async with watching(store):
        _configmap_version(root, "..2026_11_21_v2", "m2")
        os.symlink("..2026_11_21_v2", root / "..data_tmp")
        os.replace(root / "..data_tmp", root / "..data")  # rename(2): atomic, like the kubelet
        waited = await until(lambda: store.current.tenants["acme"].model == "m2")
    assert waited < 2.0
