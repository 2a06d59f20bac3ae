"""Real Redis Cluster and Sentinel deployments on loopback, for the scale-out tests.

- ``RedisClusterNodes``: three masters (``--cluster-enabled yes``) joined with
  ``redis-cli --cluster create``; ready once every node reports ``cluster_state:ok``.
- ``RedisSentinelGroup``: a master, one replica and one sentinel (quorum 1) watching service
  ``mymaster``; ``failover()`` asks the sentinel to promote the replica and waits until it did.

Both need the ``redis-server`` binary (Sentinel runs as ``redis-server CONF --sentinel``); the cluster
also needs ``redis-cli``. ``missing_binaries()`` says what is absent so tests can skip cleanly.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from devstack.ports import free_port
from devstack.redis_server import RedisServer, find_redis_server

SERVICE = "mymaster"
_READY_TIMEOUT_S = 30.0


def missing_binaries(*, cluster: bool) -> str | None:
    try:
        find_redis_server()
    except FileNotFoundError:
        return "no redis-server binary"
    if cluster and shutil.which("redis-cli") is None:
        return "no redis-cli binary (needed to create a cluster)"
    return None


def _wait(check_name: str, check: object, timeout_s: float = _READY_TIMEOUT_S) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{check_name} not reached within {timeout_s:.0f}s")
        time.sleep(0.1)


class RedisClusterNodes:
    """Three cluster masters on loopback; ``url`` names the first (any node would do)."""

    def __init__(self) -> None:
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(3):
                port = _cluster_port()
                self.nodes.append(
                    RedisServer(
                        port=port,
                        extra_args=[
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            f"nodes-{port}.conf",
                            "--cluster-node-timeout",
                            "2000",
                        ],
                    )
                )
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=_READY_TIMEOUT_S,
            )
            for node in self.nodes:
                _wait(f"cluster_state:ok on {node.port}", lambda n=node: _cluster_ok(n))
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def flush(self) -> None:
        for node in self.nodes:
            client = redis.Redis(host=node.host, port=node.port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, Redis's rule) is free and valid too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _cluster_ok(node: RedisServer) -> bool:
    client = redis.Redis(host=node.host, port=node.port, socket_timeout=1)
    try:
        info = _command(client, "CLUSTER", "INFO")
    finally:
        client.close()
    if isinstance(info, dict):  # parsed by some redis-py versions
        return info.get("cluster_state") == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def _command(client: redis.Redis, *args: str) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


class RedisSentinelGroup:
    """A master, a replica and a sentinel; ``url`` is the ``redis+sentinel://`` URL of db 0."""

    def __init__(self) -> None:
        self.servers: list[RedisServer] = []
        self.sentinel: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-"))
        try:
            master = RedisServer()
            self.servers.append(master)
            self.servers.append(
                RedisServer(extra_args=["--replicaof", master.host, str(master.port)])
            )
            self.sentinel_port = free_port()
            conf = self.dir / "sentinel.conf"  # writable: Sentinel rewrites its own config
            conf.write_text(
                f"port {self.sentinel_port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.dir}\n"
                f"logfile {self.dir / 'sentinel.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            self.sentinel = subprocess.Popen(
                [str(find_redis_server()), str(conf), "--sentinel"],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            _wait("replica in sync", lambda: self._replica_linked(self.servers[1]))
            _wait("sentinel sees the replica", self._sentinel_knows_replica)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    def _sentinel(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=1)

    def master_port(self) -> int:
        client = self._sentinel()
        try:
            _, port = _command(client, "SENTINEL", "get-master-addr-by-name", SERVICE)
        finally:
            client.close()
        return int(port)

    def _sentinel_knows_replica(self) -> bool:
        client = self._sentinel()
        try:
            replicas = _command(client, "SENTINEL", "replicas", SERVICE)
        finally:
            client.close()
        return bool(replicas)

    @staticmethod
    def _replica_linked(server: RedisServer) -> bool:
        client = redis.Redis(host=server.host, port=server.port, socket_timeout=1)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def flush(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.master_port(), socket_timeout=2)
        try:
            client.flushall()
        finally:
            client.close()

    def failover(self) -> int:
        """Promote the replica; returns the new master's port once the sentinel names it."""
        before = self.master_port()
        replica = next(s for s in self.servers if s.port != before)
        _wait("replica in sync", lambda: self._replica_linked(replica))
        client = self._sentinel()
        try:
            _command(client, "SENTINEL", "failover", SERVICE)
        finally:
            client.close()
        _wait("failover", lambda: self.master_port() != before)
        return self.master_port()

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            try:
                self.sentinel.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.sentinel.kill()
                self.sentinel.wait()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
