"""What a newcomer meets first in the preloader: ``--once`` with nothing to warm reachable, JSON
answers on every route, flags with their defaults."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson

from devstack.ports import free_port
from tests.preloader_fixtures import (
    PreloaderFactory,
    preloader_settings,
    standard_tenants,
    v2_endpoint,
)
from tests.router_fixtures import ConfigDir

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ("tests.preloader_fixtures",)


async def test_once_with_no_instance_reachable_says_what_is_warm_and_what_to_start(
    tmp_path: Path, preloader_redis_url: str
) -> None:
    """Both instances refuse connections: exit 1, nothing claimed warm, each address named with
    what to start."""
    cfg = ConfigDir(tmp_path / "cfg")
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    cfg.endpoints({"mme": v2_endpoint(urls)})
    standard_tenants(cfg)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "preloader", "--config", str(cfg.root), "--once",
        "--redis-url", preloader_redis_url,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 60)
    out, err = out_bytes.decode(), err_bytes.decode()
    assert process.returncode == 1, (out, err)
    assert "mme: 0 of 4 models warm on every reachable instance (2 instances listed)" in out
    reach = [line for line in out.splitlines() if line.startswith("mme: could not reach ")]
    assert len(reach) == 1, out
    assert all(url in reach[0] for url in urls)
    assert "start the model server at each address" in reach[0]
    summary = [orjson.loads(line)["msg"] for line in err.splitlines()][-1]
    assert summary.startswith("summary endpoint=* models=0/4 instances=2 "), summary


async def test_unknown_routes_and_methods_answer_json(
    tmp_path: Path, preloader_redis_url: str, start_preloader: PreloaderFactory
) -> None:
    """The preloader's server (cluster or sidecar) never answers plain text: 404 and 405 are the
    router's JSON error body."""
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": v2_endpoint([f"http://127.0.0.1:{free_port()}"])})
    standard_tenants(cfg)
    preloader = await start_preloader(preloader_settings(cfg, preloader_redis_url))
    for method, path, status, code in [
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/ready", 405, "method_not_allowed"),
    ]:
        async with preloader.session.request(method, preloader.url + path) as resp:
            assert resp.status == status
            assert resp.content_type == "application/json"
            body = await resp.json()
            assert body["error"]["code"] == code
            assert body["error"]["request_id"]


def test_help_shows_defaults_but_never_a_token() -> None:
    """``--help`` of all three commands shows the defaults in effect; the admin token from the
    environment is never printed."""
    env = {
        "WARMROUTE_ADMIN_TOKEN": "s3cret-token",
        "WARMROUTE_REDIS_URL": "redis://:pa55word@redis.internal:6379/0",
        "PATH": "/usr/bin:/bin",
    }
    outputs = {}
    for module in ("router", "preloader", "tenancy"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        outputs[module] = " ".join(done.stdout.split())
    assert "(default: 8080)" in outputs["router"]
    assert "(default: redis://:***@redis.internal:6379/0)" in outputs["router"]
    assert "(default: 20.0)" in outputs["router"]
    assert "s3cret-token" not in outputs["router"]
    assert all("pa55word" not in text for text in outputs.values())
    assert "(default: 9090)" in outputs["preloader"]
    assert "(default: 2.0)" in outputs["preloader"]
    done = subprocess.run(
        [sys.executable, "-m", "tenancy", "schema", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "(default: schema)" in done.stdout
