"""The local stack of ``make run``: two MLServer instances as one v2 endpoint, Redis, the router and
its preloader, on the embedded ``examples/config``. Ctrl-C stops everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from devstack.mlserver import MLServerInstance, models_dir, repo_root, start_mlserver
from devstack.ports import wait_http
from devstack.redis_server import ensure_redis

MLSERVER_PORTS = (8081, 8082)  # as examples/config/endpoints.yaml names them
ROUTER_PORT = 8080
PRELOADER_PORT = 9090
REDIS_URL = "redis://127.0.0.1:6379/0"


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args, cwd=repo_root(), stdout=out, stderr=subprocess.STDOUT, env=env
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def curl_examples(router: str) -> str:
    iris = (
        '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'
    )
    diabetes = (
        '{"inputs":[{"name":"input-0","shape":[1,10],"datatype":"FP64",'
        '"data":[0.03,0.05,0.06,0.02,-0.04,-0.03,-0.04,-0.002,0.02,-0.02]}]}'
    )
    invoke = f"{router}/v1/tenants"
    json_header = "-H 'Content-Type: application/json'"
    return "\n".join(
        [
            "# globex (no key; a canary on iris-tree vs iris-knn, sticky per X-Unit-Id):",
            f"curl -si {invoke}/globex/invocations {json_header} -H 'X-Unit-Id: user-42' -d '{iris}'",
            "# acme needs its API key:",
            f"curl -s {invoke}/acme/invocations {json_header} "
            f"-H 'Authorization: Bearer demo-acme-key' -d '{iris}'",
            "# initech (a regression model):",
            f"curl -s {invoke}/initech/invocations {json_header} -d '{diabetes}'",
            "# which variant would a unit get, and why (stores nothing):",
            f"curl -s '{router}/v1/admin/tenants/globex/assignment?unit=user-42'",
            "# tenants and their routes; metrics:",
            f"curl -s {router}/v1/admin/tenants",
            f"curl -s {router}/metrics | grep ^router_",
        ]
    )


@contextlib.contextmanager
def running_stack(config: Path, state: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start everything; yields the long-running children; stops all it started, in reverse."""
    state.mkdir(parents=True, exist_ok=True)
    for port in (*MLSERVER_PORTS, ROUTER_PORT, PRELOADER_PORT):
        if _port_taken(port):
            raise SystemExit(f"port {port} is already in use: stop what runs there and retry")
    env = {**os.environ, "WARMROUTE_LOG_LEVEL": os.environ.get("WARMROUTE_LOG_LEVEL", "INFO")}
    with contextlib.ExitStack() as stack:
        redis = ensure_redis(REDIS_URL)
        if redis is not None:
            stack.callback(redis.stop)
            print(f"started a Redis for this stack at {redis.url}")
        instances: list[MLServerInstance] = []
        for port in MLSERVER_PORTS:
            instance = start_mlserver(
                models_dir(), state / f"mlserver-{port}", http_port=port, wait=False
            )
            stack.callback(instance.stop)
            instances.append(instance)
        for instance in instances:
            instance.wait_ready(60)
            print(f"MLServer ready at {instance.url} (no model loaded)")
        python = sys.executable
        router = _spawn(
            [python, "-m", "router", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(ROUTER_PORT), "--redis-url", REDIS_URL],
            state / "router.log",
            env,
        )  # fmt: skip
        stack.callback(_stop, router)
        url = f"http://127.0.0.1:{ROUTER_PORT}"
        wait_http(f"{url}/readyz", timeout=30)
        children = [router]
        if (repo_root() / "preloader" / "__main__.py").exists():
            preloader = _spawn(
                [python, "-m", "preloader", "--config", str(config), "--redis-url", REDIS_URL,
                 "--host", "127.0.0.1", "--port", str(PRELOADER_PORT)],
                state / "preloader.log",
                env,
            )  # fmt: skip
            stack.callback(_stop, preloader)
            children.append(preloader)
            print(f"preloader warming the example models (log: {state / 'preloader.log'})")
        print(f"router ready at {url} (log: {state / 'router.log'})\n")
        print(curl_examples(url))
        print("\nCtrl-C stops everything this started.")
        yield children


def run(config: Path, state: Path) -> int:
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        with running_stack(config, state) as children:
            while not stop:
                time.sleep(0.5)
                for child in children:
                    if child.poll() is not None:
                        print(f"a child exited with {child.returncode}; see the logs in {state}")
                        return 1
    except KeyboardInterrupt:
        pass
    print("\nstopped")
    return 0
