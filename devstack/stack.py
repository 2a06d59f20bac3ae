"""The local stack of ``make run``: two MLServer instances as one v2 endpoint, Redis, the router and
its preloader, on the embedded ``examples/config``. Ctrl-C stops everything it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from devstack.mlserver import MLServerInstance, models_dir, repo_root, start_mlserver
from devstack.ports import urlopen_direct, wait_http
from devstack.redis_server import ensure_redis, flush_database
from tenancy.processing import STEP_MODULES_ENV
from tenancy.text import plural

MLSERVER_PORTS = (8081, 8082)  # as examples/config/endpoints.yaml names them
ROUTER_PORT = 8080
PRELOADER_PORT = 9090
REDIS_ADDRESS = "redis://127.0.0.1:6379"
# The stack's own Redis database, emptied on start: never the shared database 0, never the tests'.
RUN_REDIS_DB_ENV = "WARMROUTE_RUN_REDIS_DB"
DEFAULT_RUN_REDIS_DB = 15
WARM_TIMEOUT_S = 120.0


def run_redis_url(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    raw = env.get(RUN_REDIS_DB_ENV, str(DEFAULT_RUN_REDIS_DB))
    if not raw.isdigit():
        raise SystemExit(f"{RUN_REDIS_DB_ENV} must be a database number, not {raw!r}")
    return f"{REDIS_ADDRESS}/{int(raw)}"


def warm_summary(readiness: dict[str, object], seconds: float) -> str:
    """The preloader's /ready details as one line: ``all N models warm on M instances (T s)``."""
    endpoints = readiness.get("endpoints")
    models = instances = 0
    if isinstance(endpoints, dict):
        for details in endpoints.values():
            if isinstance(details, dict):
                models += int(details.get("models", 0))
                instances += int(details.get("instances", 0))
    return (
        f"all {plural(models, 'model')} warm on {plural(instances, 'instance')} ({seconds:.1f} s)"
    )


def wait_warm(preloader_url: str, timeout: float) -> dict[str, object]:
    """Poll the preloader's ``/ready`` until its first pass has warmed everything; its details."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urlopen_direct(f"{preloader_url}/ready", 2.0) as resp:
                details: dict[str, object] = json.loads(resp.read())
                return details
        except OSError as exc:  # 503 (HTTPError) while warming, refused while starting
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"the models were not warm within {timeout:.0f} s (last: {last})")


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
    env.setdefault(STEP_MODULES_ENV, "examples.")  # the example configs' custom steps
    redis_url = run_redis_url()
    with contextlib.ExitStack() as stack:
        redis = ensure_redis(redis_url)
        if redis is not None:
            stack.callback(redis.stop)
            print(f"started a Redis for this stack at {redis.url}")
        flush_database(redis_url)
        print(f"Redis {redis_url} (emptied; {RUN_REDIS_DB_ENV} picks another database)")
        instances: list[MLServerInstance] = []
        for port in MLSERVER_PORTS:
            instance = start_mlserver(
                models_dir(), state / f"mlserver-{port}", http_port=port, wait=False
            )
            stack.callback(instance.stop)
            instances.append(instance)
        for instance in instances:
            instance.wait_ready(60)
            print(f"MLServer ready at {instance.url} (no model loaded; log: {instance.log_path})")
        python = sys.executable
        router = _spawn(
            [python, "-m", "router", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(ROUTER_PORT), "--redis-url", redis_url],
            state / "router.log",
            env,
        )  # fmt: skip
        stack.callback(_stop, router)
        url = f"http://127.0.0.1:{ROUTER_PORT}"
        wait_http(f"{url}/readyz", timeout=30)
        print(f"router ready at {url} (log: {state / 'router.log'})")
        started = time.monotonic()
        preloader = _spawn(
            [python, "-m", "preloader", "--config", str(config), "--redis-url", redis_url,
             "--host", "127.0.0.1", "--port", str(PRELOADER_PORT)],
            state / "preloader.log",
            env,
        )  # fmt: skip
        stack.callback(_stop, preloader)
        print(f"preloader warming the example models (log: {state / 'preloader.log'})")
        readiness = wait_warm(f"http://127.0.0.1:{PRELOADER_PORT}", WARM_TIMEOUT_S)
        print(warm_summary(readiness, time.monotonic() - started) + "\n")
        print(curl_examples(url))
        print(f"\nCtrl-C (or kill -INT {os.getpid()}) stops everything this started.", flush=True)
        children = [router, preloader]
        yield children


def run(config: Path, state: Path) -> int:
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    # Set explicitly: a shell starting `make run &` without job control hands its background
    # jobs SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # seen live when piped
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
