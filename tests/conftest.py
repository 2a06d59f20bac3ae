"""Fixtures for the real components: MLServer, Redis, moto, and the SageMaker front over MLServer.

Router fixtures live in ``tests/router_fixtures.py``. Subprocess fixtures are synchronous (they
block only at session start); the SageMaker front is async because it runs on the test's loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis

from devstack import mlserver as mls
from devstack.redis_server import RedisServer, redis_ping
from tenancy.processing import STEP_MODULES_ENV
from tests.support.moto_server import MotoServer
from tests.support.sagemaker_front import SageMakerFront, start_sagemaker_front

MLServerPair = tuple[mls.MLServerInstance, mls.MLServerInstance]

MACHINE_REDIS = ("127.0.0.1", 6379)
# Overridable so two test runs on one machine (one Redis) do not flush each other's data.
TEST_REDIS_DB = int(os.environ.get("WARMROUTE_TEST_REDIS_DB", "9"))
SAGEMAKER_ENDPOINT = "mme-test"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The example model repository (``.cache/models``); fails with "run make setup" if absent."""
    return mls.models_dir()


@pytest.fixture(scope="session")
def mlserver_pair(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLServerPair]:
    """Two empty MLServer instances for the whole session, started in parallel."""
    base = tmp_path_factory.mktemp("mlserver")
    instances: list[mls.MLServerInstance] = []
    try:
        for name in ("a", "b"):
            instances.append(mls.start_mlserver(models_dir, base / name, wait=False))
        for instance in instances:
            instance.wait_ready(timeout=180.0)  # a loaded shared machine starts MLServer slowly
        yield instances[0], instances[1]
    finally:
        for instance in instances:
            instance.stop()


@pytest.fixture
def fresh_mlservers(mlserver_pair: MLServerPair) -> MLServerPair:
    """The pair, alive, running and with no model loaded: the test starts cold.

    Repairs what an earlier test did to them (paused -> resumed, dead -> restarted).
    """
    for instance in mlserver_pair:
        if instance.paused:
            instance.resume()
        if not instance.is_alive():
            instance.restart()
        instance.unload_all()
    return mlserver_pair


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """The machine's Redis at 127.0.0.1:6379 when it answers PING, else an own server."""
    if redis_ping(*MACHINE_REDIS):
        yield f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}"
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.stop()


def flushed(url: str) -> str:
    """``url`` after emptying its database: each test starts from nothing."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    """``redis://.../9`` (or ``WARMROUTE_TEST_REDIS_DB``), flushed before the test."""
    return flushed(f"{redis_base_url}/{TEST_REDIS_DB}")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, free to kill, pause and restart."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto server for the session; call ``moto.reset()`` for a clean slate."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def sagemaker_front(fresh_mlservers: MLServerPair) -> AsyncIterator[SageMakerFront]:
    """A SageMaker-Runtime front for endpoint "mme-test" over the first (cold) MLServer."""
    front = await start_sagemaker_front(fresh_mlservers[0].url, endpoint_name=SAGEMAKER_ENDPOINT)
    try:
        yield front
    finally:
        await front.close()


def pytest_configure(config: pytest.Config) -> None:
    """Custom steps of the examples and of the tests themselves are allowed (SPEC: only modules
    under WARMROUTE_STEP_MODULES); subprocesses the tests start inherit it. Added to what is set
    (`make test` exports the examples' prefix), never replacing it."""
    prefixes = [p for p in os.environ.get(STEP_MODULES_ENV, "").split(",") if p]
    prefixes += [p for p in ("examples.", "tests.") if p not in prefixes]
    os.environ[STEP_MODULES_ENV] = ",".join(prefixes)


pytest_plugins = ("tests.router_fixtures", "tests.scaleout_fixtures", "tests.placement_fixtures")
