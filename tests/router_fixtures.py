"""Fixtures that run warmroute itself: ``create_app`` on a real port, with its config written by the test."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from multidict import CIMultiDict

from router.app import create_app
from router.metrics import RouterMetrics
from router.serving import RouterRunner
from router.settings import Settings

Headers = CIMultiDict[str]

IRIS_SETOSA = [5.1, 3.5, 1.4, 0.2]


def v2_body(rows: list[list[float]]) -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [len(rows), len(rows[0])],
                    "datatype": "FP64",
                    "data": [x for row in rows for x in row],
                }
            ]
        }
    )


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ConfigDir:
    """A tenant config directory a test writes and edits."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tenants").mkdir(parents=True, exist_ok=True)

    def endpoints(self, endpoints: dict[str, Any]) -> None:
        self._write(self.root / "endpoints.yaml", {"endpoints": endpoints})

    def tenant(self, name: str, **config: Any) -> Path:
        path = self.root / "tenants" / f"{name}.yaml"
        self._write(path, config)
        return path

    def raw(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.write_text(text)
        return path

    def remove(self, name: str) -> None:
        (self.root / "tenants" / f"{name}.yaml").unlink()

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> None:
        # Write then rename: the watcher never sees half a file (as with real deploy tools).
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(path)


@dataclass
class RunningRouter:
    url: str
    app: web.Application
    config: ConfigDir
    metrics: RouterMetrics
    session: aiohttp.ClientSession
    runner: web.AppRunner = field(repr=False)

    async def invoke(
        self,
        tenant: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        unit: str | None = None,
    ) -> tuple[int, Headers, bytes]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        if unit is not None:
            sent["X-Unit-Id"] = unit
        payload = v2_body([IRIS_SETOSA]) if body is None else body
        async with self.session.post(
            f"{self.url}/v1/tenants/{tenant}/invocations", data=payload, headers=sent
        ) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.read()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
        total = 0.0
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    async def reload(self, admin_token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        async with self.session.post(f"{self.url}/v1/admin/reload", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data


RouterFactory = Callable[..., Awaitable[RunningRouter]]


@pytest.fixture
def mme_config(tmp_path: Path, fresh_mlservers: Any) -> ConfigDir:
    """A config directory with one v2 endpoint, ``mme``, over both (cold) MLServer instances."""
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers]}})
    return cfg


def load_patiently(instance: Any, model: str, attempts: int = 3) -> None:
    """Load ``model`` on an MLServer; a first sklearn load on a busy machine can outlast one call."""
    for attempt in range(attempts):
        try:
            instance.load(model)
            return
        except TimeoutError:
            if attempt == attempts - 1:
                raise


def error_parts(answer: tuple[int, Any, bytes]) -> tuple[int, str, str]:
    """(status, error code, message) of an error answer."""
    status, _, body = answer
    error = orjson.loads(body)["error"]
    return status, error["code"], error["message"]


@pytest_asyncio.fixture
async def start_router(redis_url: str) -> AsyncIterator[RouterFactory]:
    """``await start_router(config_dir, **settings)`` -> a router on a real 127.0.0.1 port."""
    started: list[RunningRouter] = []

    async def start(config: ConfigDir, **overrides: Any) -> RunningRouter:
        settings = Settings(
            config_dir=config.root,
            host="127.0.0.1",
            port=0,
            redis_url=overrides.pop("redis_url", redis_url),
            reload_interval_s=overrides.pop("reload_interval_s", 0.2),
            **overrides,
        )
        metrics = RouterMetrics()
        app = create_app(settings, metrics=metrics)
        runner = RouterRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        session = aiohttp.ClientSession()
        router = RunningRouter(f"http://127.0.0.1:{port}", app, config, metrics, session, runner)
        started.append(router)
        return router

    yield start
    for router in started:
        await router.session.close()
        await router.runner.cleanup()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    """Wait until ``check()`` holds; fail with the time it took otherwise."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within_s}s")
        await asyncio.sleep(0.05)


def parse_metric_text(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"^{re.escape(name)}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def model_predict(models_dir: Path, model: str, rows: list[list[float]]) -> list[float]:
    """The model's own prediction, computed in MLServer's environment from the same pickle."""
    import subprocess

    python = models_dir.parent.parent / ".venv-mlserver" / "bin" / "python"
    script = (
        "import sys, json, joblib; m = joblib.load(sys.argv[1]); "
        "print(json.dumps(m.predict(json.loads(sys.argv[2])).tolist()))"
    )
    out = subprocess.run(
        [str(python), "-c", script, str(models_dir / model / "model.joblib"), orjson.dumps(rows)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: list[float] = orjson.loads(out)
    return result


def output_data(body: bytes) -> list[float]:
    data: list[float] = orjson.loads(body)["outputs"][0]["data"]
    return data
