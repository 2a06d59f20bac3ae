"""Fixtures that run the preloader: ``create_app`` on a real port, its own Redis, config helpers.

The preloader tests use a Redis of their own (one ``redis-server`` per session, flushed per test):
the lock, warm map and flag keys must not be flushed by another test run sharing the machine's
Redis.

Test modules load this file with ``pytest_plugins`` and import its helpers too, so it opts out of
assertion rewriting (PYTEST_DONT_REWRITE): it is imported before pytest could mark it.
"""

from __future__ import annotations

import asyncio
import io
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web

from devstack.mlserver import MLServerInstance
from devstack.ports import urlopen_direct
from devstack.redis_server import RedisServer
from preloader.app import create_app
from preloader.engine import Preloader
from preloader.keys import PRELOADER
from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress
from preloader.settings import Settings
from router.warm_map import warm_flag_key, warm_map_key
from tests.conftest import flushed
from tests.router_fixtures import IRIS_SETOSA, ConfigDir

DIABETES_ROW = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]


def v2_sample(row: list[float]) -> dict[str, Any]:
    """A warm-up body (as the YAML holds it): one FP64 row for MLServer's sklearn runtime."""
    return {
        "inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}]
    }


IRIS_SAMPLE = v2_sample(IRIS_SETOSA)
DIABETES_SAMPLE = v2_sample(DIABETES_ROW)


def standard_tenants(cfg: ConfigDir, endpoint: str = "mme") -> dict[str, str]:
    """All four models: acme (iris-lr), globex (iris-tree, canary iris-knn), initech (diabetes-lr).

    Returns tenant -> its default model. Unit ``qa-canary`` is forced onto globex's canary.
    """
    cfg.tenant("acme", endpoint=endpoint, model="iris-lr",
               preload={"priority": 10, "sample": IRIS_SAMPLE})  # fmt: skip
    cfg.tenant(
        "globex",
        endpoint=endpoint,
        model="iris-tree",
        experiment={
            "name": "tree-vs-knn",
            "kind": "canary",
            "variants": [
                {"name": "control", "model": "iris-tree", "weight": 90},
                {"name": "canary", "model": "iris-knn", "weight": 10},
            ],
            "overrides": {"canary": ["qa-canary"]},
        },
        preload={"priority": 5, "sample": IRIS_SAMPLE},
    )
    cfg.tenant("initech", endpoint=endpoint, model="diabetes-lr",
               preload={"priority": 1, "sample": DIABETES_SAMPLE})  # fmt: skip
    return {"acme": "iris-lr", "globex": "iris-tree", "initech": "diabetes-lr"}


ALL_MODELS = frozenset({"iris-lr", "iris-tree", "iris-knn", "diabetes-lr"})


def v2_endpoint(urls: list[str], **extra: Any) -> dict[str, Any]:
    return {"kind": "v2", "instances": urls, "timeout_ms": 2000, **extra}


# -- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def preloader_redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def preloader_redis_url(preloader_redis_server: RedisServer) -> str:
    return flushed(f"{preloader_redis_server.url}/0")


@pytest_asyncio.fixture
async def redis_client(preloader_redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(preloader_redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def warm_map(client: aioredis.Redis, endpoint: str) -> dict[str, list[str]]:
    """instance -> models, as published."""
    raw = await client.hgetall(warm_map_key(endpoint))
    return {_text(k): orjson.loads(v)["models"] for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def warm_flag(client: aioredis.Redis, endpoint: str) -> bool:
    return await client.get(warm_flag_key(endpoint)) == b"1"


# -- the preloader -------------------------------------------------------------------------------


def preloader_settings(config: ConfigDir, redis_url: str, **overrides: Any) -> Settings:
    """Short intervals so a test sees each change within a fraction of a second."""
    base = Settings(
        config_dir=config.root,
        redis_url=redis_url,
        host="127.0.0.1",
        port=0,
        check_interval_s=0.2,
        lock_ttl_s=1.0,
        reload_interval_s=0.1,
        shutdown_timeout_s=2.0,
    )
    return replace(base, **overrides)


@dataclass
class RunningPreloader:
    url: str
    app: web.Application
    metrics: PreloaderMetrics
    output: io.StringIO
    session: aiohttp.ClientSession
    runner: web.AppRunner = field(repr=False)
    stopped: bool = False

    @property
    def engine(self) -> Preloader:
        return self.app[PRELOADER]

    async def ready(self) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.url}/ready") as resp:
            data: dict[str, Any] = await resp.json()
            return resp.status, data

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def leading(self, endpoint: str) -> bool:
        running = self.engine.running.get(endpoint)
        return bool(running and running.leadership and running.leadership.leading)

    async def stop(self) -> None:
        """Graceful stop, as on SIGTERM: tasks cancelled and awaited, locks released."""
        if not self.stopped:
            self.stopped = True
            await self.session.close()
            await self.runner.cleanup()


PreloaderFactory = Callable[[Settings], Awaitable[RunningPreloader]]


@pytest_asyncio.fixture
async def start_preloader() -> AsyncIterator[PreloaderFactory]:
    """``await start_preloader(settings)`` -> the preloader app on a real 127.0.0.1 port."""
    started: list[RunningPreloader] = []

    async def start(settings: Settings) -> RunningPreloader:
        metrics = PreloaderMetrics()
        output = io.StringIO()
        app = create_app(settings, metrics=metrics, progress=Progress(output, tty=True))
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        running = RunningPreloader(
            f"http://127.0.0.1:{port}", app, metrics, output, aiohttp.ClientSession(), runner
        )
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


# -- MLServer observations -----------------------------------------------------------------------


def inferences(instance: MLServerInstance) -> float:
    """Successful inferences the instance served (its own Prometheus counter, all models)."""
    url = f"http://127.0.0.1:{instance.metrics_port}/metrics"
    with urlopen_direct(urllib.request.Request(url), 5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("model_infer_request_success_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- one endpoint_url for both SageMaker APIs ----------------------------------------------------


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials come from the standard chain (here: the environment), never from config."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


async def settle(seconds: float = 0.3) -> None:
    """Let background loops run a few ticks (used only to show nothing happens)."""
    await asyncio.sleep(seconds)
