"""``python -m devstack run`` (what ``make run`` starts), end to end: its own Redis database emptied
on start, the model servers' log paths, the warm line before the curl examples, and a clean stop on
SIGINT even when started as a shell's background job (SIGINT ignored on entry)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from devstack.ports import urlopen_direct
from devstack.stack import MLSERVER_PORTS, PRELOADER_PORT, ROUTER_PORT, curl_examples
from tests.conftest import TEST_REDIS_DB

REPO = Path(__file__).resolve().parent.parent
IRIS = b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _read_until(stream: IO[str], marker: str, process: subprocess.Popen[str]) -> list[str]:
    lines: list[str] = []
    for line in stream:
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"exited with {process.wait()} before {marker!r}:\n" + "\n".join(lines))


def _call(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """(status, JSON body) of a request to the stack."""
    request = urllib.request.Request(url, data=body, headers=headers or {})  # noqa: S310  loopback http
    try:
        with urlopen_direct(request, 10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def follow_the_readme_walkthrough(state: Path, config: Path) -> None:
    """README "Your first hour", steps 2 to 5, as a newcomer would run them."""
    router = f"http://127.0.0.1:{ROUTER_PORT}"
    three_features = (
        b'{"inputs":[{"name":"input-0","shape":[1,3],"datatype":"FP64","data":[5.1,3.5,1.4]}]}'
    )
    status, body = _call(
        f"{router}/v1/tenants/globex/invocations",
        three_features,
        {"Content-Type": "application/json", "X-Request-Id": "trace-me-1", "X-Unit-Id": "user-42"},
    )
    assert (status, body["error"]["code"]) == (502, "upstream_error"), body
    assert body["error"]["request_id"] == "trace-me-1"
    # step 3: the router's WARNING names the instance; step 4: that instance's log has the cause
    deadline = time.monotonic() + 10
    while not (
        lines := [x for x in (state / "router.log").read_text().splitlines() if "trace-me-1" in x]
    ):
        assert time.monotonic() < deadline, "no router log line for the request id"
        time.sleep(0.2)
    instance = re.search(r"instance=http://127\.0\.0\.1:(\d+)", lines[0])
    assert instance is not None, lines
    mlserver_log = state / f"mlserver-{instance.group(1)}" / "mlserver.log"
    # MLServer answers the 500 first and logs the traceback after it: wait for the line.
    while "X has 3 features" not in mlserver_log.read_text():
        assert time.monotonic() < deadline + 10, mlserver_log.read_text()[-2000:]
        time.sleep(0.2)

    # step 5: find a unit in the canary, roll the canary back, and it is in control
    def assigned(unit: str) -> dict[str, str]:
        _, decided = _call(f"{router}/v1/admin/tenants/globex/assignment?unit={unit}")
        return dict(decided)

    in_canary = [
        u for u in (f"user-{i}" for i in range(1, 41)) if assigned(u)["variant"] == "canary"
    ]
    assert in_canary
    globex = config / "tenants" / "globex.yaml"
    text = globex.read_text()
    assert "model: iris-knn, weight: 20" in text, "the README's sed line must match the example"
    globex.write_text(text.replace("model: iris-knn, weight: 20", "model: iris-knn, weight: 0"))
    status, reloaded = _call(f"{router}/v1/admin/reload", b"")
    assert status == 200, reloaded
    assert reloaded["ok"], reloaded
    assert all(assigned(u)["variant"] == "control" for u in in_canary)
    assert assigned("qa-user-1")["variant"] == "canary"  # overrides keep QA on the canary


@pytest.mark.slow
def test_make_run_stack_prints_what_a_newcomer_needs_and_stops_on_sigint(
    tmp_path: Path, redis_base_url: str
) -> None:
    busy = [p for p in (*MLSERVER_PORTS, ROUTER_PORT, PRELOADER_PORT) if _taken(p)]
    if busy or not redis_base_url.endswith(":6379"):
        pytest.skip(f"the stack's fixed ports are in use ({busy}) or no Redis on :6379")
    db_url = f"{redis_base_url}/{TEST_REDIS_DB}"
    client = redis.Redis.from_url(db_url)
    client.set("left-over", "1")
    env = {**os.environ, "WARMROUTE_RUN_REDIS_DB": str(TEST_REDIS_DB), "PYTHONUNBUFFERED": "1"}
    # `trap "" INT` then exec: SIGINT ignored on entry, as a shell without job control hands it
    # to `make run &`.
    config = tmp_path / "config"
    shutil.copytree(REPO / "examples" / "config", config)
    state = tmp_path / "state"
    command = f'trap "" INT; exec "{sys.executable}" -m devstack run --state "{state}" --config "{config}"'
    process = subprocess.Popen(
        ["sh", "-c", command],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        lines = _read_until(process.stdout, "stops everything this started", process)
        text = "\n".join(lines)
        assert f"Redis {db_url} (emptied" in text
        assert client.get("left-over") is None
        logs = [line.split("log: ")[1].rstrip(")") for line in lines if "MLServer ready" in line]
        assert len(logs) == 2, text
        assert all(Path(log).is_file() for log in logs), text
        warm = next(i for i, line in enumerate(lines) if line.startswith("all "))
        assert lines[warm].startswith("all 4 models warm on 2 instances ("), text
        assert warm < next(i for i, line in enumerate(lines) if line.startswith("curl "))
        assert curl_examples(f"http://127.0.0.1:{ROUTER_PORT}") in text

        request = urllib.request.Request(
            f"http://127.0.0.1:{ROUTER_PORT}/v1/tenants/globex/invocations",
            data=IRIS,
            headers={"Content-Type": "application/json", "X-Unit-Id": "user-42"},
        )
        with urlopen_direct(request, 10) as resp:
            assert resp.status == 200
        assert client.keys("wr:asg:*"), "the router stores sticky assignments in the stack's db"
        follow_the_readme_walkthrough(state, config)

        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=90)
        assert process.returncode == 0, rest
        assert rest.rstrip().endswith("stopped")
        deadline = time.monotonic() + 10
        while any(_taken(p) for p in (*MLSERVER_PORTS, ROUTER_PORT, PRELOADER_PORT)):
            assert time.monotonic() < deadline, "a child of the stack still holds its port"
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
        client.close()
