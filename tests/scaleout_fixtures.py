"""Fixtures for the scale-out tests: a tenant config on moto, and Redis Cluster and Sentinel
deployments (one of each per session, emptied before each test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.redis_conn import RedisTarget
from tests.router_fixtures import ConfigDir
from tests.support.moto_server import MotoServer
from tests.support.redis_topologies import (
    RedisClusterNodes,
    RedisSentinelGroup,
    missing_binaries,
)


@pytest.fixture
def moto_config(tmp_path: Path, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> ConfigDir:
    """A config with one SageMaker endpoint, ``sm``, served by moto (every call answers 200):
    cheap upstream for tests about admission and assignment, which happen before the upstream."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    moto.reset()
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {
            "sm": {
                "kind": "sagemaker",
                "endpoint_name": "mme-test",
                "region": "us-east-1",
                "endpoint_url": moto.url,
                "timeout_ms": 20000,
            }
        }
    )
    return cfg


@dataclass(frozen=True)
class Topology:
    name: str
    target: RedisTarget
    flush: Callable[[], None]

    def settings(self) -> dict[str, object]:
        """Router/preloader settings overrides that point at this deployment."""
        return {"redis_url": self.target.url, "redis_cluster": self.target.cluster}


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> Iterator[RedisClusterNodes]:
    missing = missing_binaries(cluster=True)
    if missing:
        pytest.skip(missing)
    nodes = RedisClusterNodes()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="session")
def redis_sentinel_group() -> Iterator[RedisSentinelGroup]:
    missing = missing_binaries(cluster=False)
    if missing:
        pytest.skip(missing)
    group = RedisSentinelGroup()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def redis_sentinel(redis_sentinel_group: RedisSentinelGroup) -> RedisSentinelGroup:
    redis_sentinel_group.flush()
    return redis_sentinel_group


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Topology:
    """Each test runs once on a 3-master Redis Cluster and once behind Sentinel."""
    if request.param == "cluster":
        nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster_nodes")
        nodes.flush()
        return Topology("cluster", RedisTarget(url=nodes.url, cluster=True), nodes.flush)
    group: RedisSentinelGroup = request.getfixturevalue("redis_sentinel")
    return Topology("sentinel", RedisTarget(url=group.url), group.flush)
