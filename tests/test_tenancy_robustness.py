"""Whatever a config file holds is that file's problem: the watcher lives on; duplicate keys and
custom code from modules outside WARMROUTE_STEP_MODULES are errors, in `tenancy check` and at load."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tenancy.loader import MAX_FILE_BYTES, load_directory
from tenancy.processing import STEP_MODULES_ENV
from tenancy.store import ConfigError, ConfigStore
from tests.router_fixtures import ConfigDir, RouterFactory, eventually

REPO = Path(__file__).resolve().parent.parent
V2 = {"kind": "v2", "instances": ["http://127.0.0.1:9"]}


@pytest.fixture
def config(tmp_path: Path) -> ConfigDir:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"local": V2})
    cfg.tenant("acme", endpoint="local", model="m1")
    cfg.tenant("globex", endpoint="local", model="g1")
    return cfg


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


DUPLICATED = "endpoint: local\nmodel: m1\nlimits:\n  rps: 5\n  rps: 50\n"


def test_duplicate_keys_are_an_error_in_check_and_at_load(config: ConfigDir) -> None:
    config.raw("tenants/acme.yaml", DUPLICATED)
    result = check(config.root)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "tenants/acme.yaml: line 5: duplicate key 'rps' (first on line 4)"
    ]
    with pytest.raises(ConfigError, match="line 5: duplicate key 'rps'"):
        ConfigStore(config.root).load_initial()
    config.raw("tenants/acme.yaml", "endpoint: local\nmodel: m1\nendpoint: local\n")
    assert issues_of(config.root) == [
        "tenants/acme.yaml: line 3: duplicate key 'endpoint' (first on line 1)"
    ]
    config.raw("tenants/acme.yaml", "{endpoint: local, model: m1, model: m1}\n")
    assert issues_of(config.root) == [
        "tenants/acme.yaml: line 1: duplicate key 'model' (first on line 1)"
    ]


def test_merge_keys_are_not_duplicates(config: ConfigDir) -> None:
    config.raw(
        "tenants/acme.yaml",
        "endpoint: local\nmodel: m1\nlimits:\n  <<: {rps: 5, burst: 5}\n  rps: 50\n",
    )
    assert issues_of(config.root) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "line 1: nested deeper than 64 levels"),
        (b"".join(b"  " * i + b"k:\n" for i in range(900)), "cannot load: RecursionError"),
        (bytes(range(256)) * 4, "cannot read"),
        (b"# big\n" + b" " * (MAX_FILE_BYTES + 1), "over the 1048576-byte limit"),
    ],
    ids=["deeply-nested", "deep-blocks", "binary", "huge"],
)
async def test_a_file_that_cannot_be_read_never_stops_the_watcher(
    config: ConfigDir, content: bytes, message: str
) -> None:
    store = ConfigStore(config.root)
    store.load_initial()
    watcher = asyncio.create_task(store.watch(0.05))
    try:
        (config.root / "tenants" / "acme.yaml").write_bytes(content)

        async def reported() -> bool:
            return any(message in str(i) for i in store.last_issues)

        await eventually(reported)
        assert store.current.tenants["acme"].model == "m1"  # the last good version serves
        config.tenant("globex", endpoint="local", model="g2")  # a later change is picked up

        async def picked_up() -> bool:
            return store.current.tenants["globex"].model == "g2"

        await eventually(picked_up)
        assert not watcher.done()
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_the_router_counts_an_unreadable_file_and_keeps_reloading(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    config.raw("tenants/acme.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n")

    async def counted() -> bool:
        return router.metric("router_config_reloads_total", result="error") >= 1

    await eventually(counted)
    config.tenant("globex", endpoint="local", model="g2")
    async with router.session.get(f"{router.url}/v1/admin/tenants") as resp:
        tenants = (await resp.json())["tenants"]
    for _ in range(50):
        if tenants["globex"]["model"] == "g2":
            break
        await asyncio.sleep(0.1)
        async with router.session.get(f"{router.url}/v1/admin/tenants") as resp:
            tenants = (await resp.json())["tenants"]
    assert (tenants["acme"]["model"], tenants["globex"]["model"]) == ("m1", "g2")


def custom_tenant(config: ConfigDir, function: str) -> None:
    config.tenant(
        "acme",
        endpoint="local",
        model="m1",
        preprocess=[{"step": "custom", "function": function}],
    )


@pytest.mark.parametrize("function", ["subprocess:call", "builtins:exec", "os:system"])
def test_custom_code_from_a_module_not_listed_is_invalid(config: ConfigDir, function: str) -> None:
    custom_tenant(config, function)
    module = function.split(":")[0]
    result = check(config.root)
    assert result.returncode == 1
    assert result.stdout.startswith(
        f"tenants/acme.yaml: preprocess.0.function: module {module!r} is not allowed for custom "
        f"code; {STEP_MODULES_ENV} lists the module prefixes that are"
    ), result.stdout
    with pytest.raises(ConfigError, match="is not allowed for custom code"):
        ConfigStore(config.root).load_initial()


def test_the_allowed_modules_are_read_at_validation_time(
    config: ConfigDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom_tenant(config, "examples.steps:clip_features")
    monkeypatch.setenv(STEP_MODULES_ENV, "")
    assert issues_of(config.root) == [
        "tenants/acme.yaml: preprocess.0.function: module 'examples.steps' is not allowed for "
        f"custom code; {STEP_MODULES_ENV} lists the module prefixes that are (now none: it is "
        "empty)"
    ]
    monkeypatch.setenv(STEP_MODULES_ENV, "examples_other., examples.steps")
    assert issues_of(config.root) == []
    monkeypatch.setenv(STEP_MODULES_ENV, "example")  # a dotted-name boundary, not a text prefix
    assert len(issues_of(config.root)) == 1
    monkeypatch.setenv(STEP_MODULES_ENV, "examples.")
    assert issues_of(config.root) == []
