"""``python -m router`` as operators run it: bad config exits non-zero; SIGTERM drains in-flight work."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devstack.ports import free_port, wait_http
from tests.router_fixtures import ConfigDir, v2_body

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def router_process(
    tmp_path: Path, fresh_mlservers: Any, redis_url: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [fresh_mlservers[0].url]}})
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    port = free_port()
    log = open(tmp_path / "router.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "--config", str(cfg.root), "--host", "127.0.0.1",
         "--port", str(port), "--redis-url", redis_url, "--shutdown-timeout", "10"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", timeout=20)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()


def test_invalid_config_exits_2_naming_the_problem(tmp_path: Path) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": ["http://127.0.0.1:9"]}})
    cfg.tenant("globex", endpoint="mme", model="m", limits={"rps": 0})
    result = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(cfg.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert "tenants/globex.yaml: limits.rps: must be more than 0, got 0" in result.stderr


def test_config_dir_from_environment(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "WARMROUTE_CONFIG": str(tmp_path / "missing")},
    )
    assert result.returncode == 2
    assert "no such config directory" in result.stderr


async def test_sigterm_finishes_in_flight_requests(
    router_process: tuple[subprocess.Popen[bytes], str], fresh_mlservers: Any
) -> None:
    process, url = router_process
    invoke = f"{url}/v1/tenants/globex/invocations"
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        async with session.post(invoke, data=v2_body([[5.1, 3.5, 1.4, 0.2]])) as resp:
            assert resp.status == 200  # model loaded, connection pooled

        async def slow_call() -> tuple[int, str]:
            async with session.post(invoke, data=v2_body([[5.1, 3.5, 1.4, 0.2]])) as r:
                return r.status, r.headers.get("X-Model-Id", "")

        fresh_mlservers[0].pause()
        try:
            in_flight = asyncio.create_task(slow_call())
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            # Stopped accepting: a new connection is refused while the old request still runs.
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{url}/healthz"):
                    pass
            assert not in_flight.done()
        finally:
            fresh_mlservers[0].resume()
        assert await in_flight == (200, "iris-tree")
    assert await asyncio.to_thread(process.wait, 15) == 0


def test_log_is_json_from_the_first_line(
    router_process: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    """No aiohttp banner before the JSON lines: a log shipper parses every line."""
    lines = (tmp_path / "router.log").read_text().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]
    assert any(e["msg"].startswith("router listening on http://127.0.0.1:") for e in entries)
