"""The real stack the fault matrix runs on: a Redis server of its own (reached by the router through
a delay proxy, so it can be made slow), two MLServers, a misbehaving upstream, the router and the
preloader as processes, and a config of tenants with keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import Processes, Server
from devstack import mlserver as mls
from devstack.ports import free_port
from devstack.redis_server import RedisServer
from faults.delay_proxy import DelayProxy
from faults.load import Call

ADMIN_TOKEN = "faults-admin"  # noqa: S105 (a loopback stack of the run's own)
BAD_MODES = ("slow", "html500", "truncated", "reset")
# What a caller of each misbehaving model must get: a JSON error, never a 500 or plain text.
BAD_EXPECTED = {"slow": 504, "html500": 502, "truncated": 502, "reset": 502}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Stack:
    workdir: Path
    config: Path
    mlservers: list[mls.MLServerInstance]
    redis: RedisServer
    redis_proxy: DelayProxy
    procs: Processes
    bad: Server
    router: Server
    preloader: Server | None
    keys: dict[str, str]

    # -- calls ---------------------------------------------------------------------------------

    def alpha(self, units: int = 40) -> list[Call]:
        """Tenant alpha: a canary (iris-lr / iris-tree) with sticky units: Redis on the path."""
        models = frozenset({"iris-lr", "iris-tree"})
        return [Call("alpha", self.keys["alpha"], models, unit=f"u{i}") for i in range(units)]

    def beta(self) -> Call:
        return Call("beta", self.keys["beta"], frozenset({"iris-tree"}))

    def noisy(self) -> Call:
        return Call(
            "noisy", self.keys["noisy"], frozenset({"iris-lr"}), expected=frozenset({200, 429})
        )

    def bad_call(self, mode: str) -> Call:
        return Call(mode, None, frozenset({mode}), expected=frozenset({BAD_EXPECTED[mode]}))

    # -- config --------------------------------------------------------------------------------

    def tenant_path(self, tenant: str) -> Path:
        return self.config / "tenants" / f"{tenant}.yaml"

    async def reload(self) -> dict[str, Any]:
        """POST /v1/admin/reload: answers once the new snapshot serves."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        url = f"{self.router.url}/v1/admin/reload"
        async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as r:
            data: dict[str, Any] = await r.json()
            return data

    def router_argv(self, port: int, redis_url: str) -> list[str]:
        return [
            sys.executable, "-m", "router", "--config", str(self.config), "--host", "127.0.0.1",
            "--port", str(port), "--redis-url", redis_url, "--admin-token", ADMIN_TOKEN,
            "--shutdown-timeout", "5",
        ]  # fmt: skip


def write_config(config: Path, mme: list[str], bad: str) -> dict[str, str]:
    """Endpoints ``mme`` (the MLServers) and ``bad``; tenants alpha, beta, noisy (with keys) and
    one per misbehaving mode. Returns tenant -> key."""
    keys = {t: f"key-{t}-{os.urandom(4).hex()}" for t in ("alpha", "beta", "noisy")}
    (config / "tenants").mkdir(parents=True, exist_ok=True)
    endpoints = {
        "mme": {"kind": "v2", "instances": mme, "timeout_ms": 10000},
        "bad": {"kind": "v2", "instances": [bad], "timeout_ms": 1000},
    }
    limits = {"timeout_ms": 15000, "max_concurrency": 64, "rps": 2000, "burst": 2000}
    tenants: dict[str, dict[str, Any]] = {
        "alpha": {
            "endpoint": "mme",
            "model": "iris-lr",
            "auth": {"api_key_sha256": [sha256(keys["alpha"])]},
            "limits": limits,
            "experiment": {
                "name": "faults-canary",
                "kind": "canary",
                "salt": "faults",
                "ttl_s": 3600,
                "variants": [
                    {"name": "control", "model": "iris-lr", "weight": 80},
                    {"name": "canary", "model": "iris-tree", "weight": 20},
                ],
            },
        },
        "beta": {
            "endpoint": "mme",
            "model": "iris-tree",
            "auth": {"api_key_sha256": [sha256(keys["beta"])]},
            "limits": limits,
        },
        "noisy": {
            "endpoint": "mme",
            "model": "iris-lr",
            "auth": {"api_key_sha256": [sha256(keys["noisy"])]},
            "limits": {"timeout_ms": 8000, "max_concurrency": 4, "rps": 40, "burst": 40},
        },
    }
    for mode in BAD_MODES:
        tenants[mode] = {
            "endpoint": "bad",
            "model": mode,
            "limits": {"timeout_ms": 1500},
            "preload": {"enabled": False},
        }
    write(config / "endpoints.yaml", {"endpoints": endpoints})
    for name, tenant in tenants.items():
        write(config / "tenants" / f"{name}.yaml", tenant)
    return keys


def write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")  # JSON is YAML
    tmp.replace(path)


def _start_mlservers(workdir: Path) -> list[mls.MLServerInstance]:
    instances = [
        mls.start_mlserver(mls.models_dir(), workdir / f"mlserver-{n}", wait=False) for n in "ab"
    ]
    for instance in instances:
        instance.wait_ready()
    return instances


@asynccontextmanager
async def open_stack(
    workdir: Path,
    *,
    mlservers: list[mls.MLServerInstance] | None = None,
    preloader: bool = True,
    log: Any = print,
) -> AsyncIterator[Stack]:
    """Start (or reuse the given MLServers of) the whole stack; stop what it started on exit."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at start)
    procs = Processes(workdir)
    own: list[mls.MLServerInstance] = []
    redis = RedisServer()
    async with AsyncExitStack() as stack:
        stack.callback(redis.stop)
        stack.callback(procs.stop_all)
        if mlservers is None:
            log("starting two MLServers ...")
            own = await asyncio.to_thread(_start_mlservers, workdir)
            mlservers = own
        for instance in own:
            stack.callback(instance.stop)
        proxy = await stack.enter_async_context(DelayProxy("127.0.0.1", redis.port))
        py = sys.executable
        bad_port = free_port()
        # Started from a thread: the delay proxy on this loop must forward while they start.
        bad = await asyncio.to_thread(
            procs.start,
            "bad_upstream",
            [py, "-m", "faults.bad_upstream", "--port", str(bad_port), "--slow-s", "5"],
            url=f"http://127.0.0.1:{bad_port}",
            ready_path="/v2/health/ready",
        )
        config = workdir / "config"
        keys = write_config(config, [m.url for m in mlservers], bad.url)
        router_port = free_port()
        partial = Stack(workdir, config, mlservers, redis, proxy, procs, bad, bad, None, keys)
        router = await asyncio.to_thread(
            procs.start,
            "router",
            partial.router_argv(router_port, proxy.url(path="/0")),
            url=f"http://127.0.0.1:{router_port}",
            ready_path="/readyz",
            env={"WARMROUTE_LOG_LEVEL": "WARNING"},
            timeout_s=60,
        )
        partial.router = router
        if preloader:
            log("starting the preloader and waiting until the warm set is loaded ...")
            port = free_port()
            partial.preloader = await asyncio.to_thread(
                procs.start,
                "preloader",
                [py, "-m", "preloader", "--config", str(config), "--redis-url",
                 f"{redis.url}/0", "--host", "127.0.0.1", "--port", str(port)],
                url=f"http://127.0.0.1:{port}",
                ready_path="/ready",
                env={"WARMROUTE_LOG_LEVEL": "WARNING"},
                timeout_s=300,
            )  # fmt: skip
        yield partial
