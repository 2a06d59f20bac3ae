"""Real MLServer instances as subprocesses, for the local stack, the tests and the benchmark.

Each instance runs ``<repo>/.venv-mlserver/bin/mlserver start <workdir>`` with its own
``settings.json`` (three distinct free ports, an empty start, no worker pool) and logs to a file.

Behaviour of MLServer 1.7.1 as measured here (Open Inference Protocol v2 over REST):

- ``GET /v2/health/ready`` answers 200 with an empty body about 1-3 s after the process starts.
- ``POST /v2/models/{m}/infer`` for a model that is in the repository but not loaded answers
  **404** ``{"error":"Model iris-lr not found"}`` (``application/json``); there is no lazy load.
  With a version (``/v2/models/{m}/versions/v1/infer``): 404
  ``{"error":"Model iris-lr with version v1 not found"}``.
- ``POST /v2/repository/models/{m}/load`` answers **200 with an empty body** (the first sklearn load
  in a process takes ~1-2 s, later ones 10-100 ms); loading an already loaded model reloads it
  and answers 200 again; a name that is not in the repository answers 404
  ``{"error":"Model nope not found"}``.
- ``POST /v2/repository/models/{m}/unload`` answers 200 with an empty body; unloading a model
  that is not loaded answers 404 ``{"error":"Model X not found"}``.
- ``POST /v2/repository/index`` needs ``Content-Type: application/json`` and a JSON object
  (``{}``; without the header: 422). It answers every model of the repository:
  ``[{"name":"iris-lr","version":"v1","state":"READY","reason":""},
  {"name":"iris-tree","version":"v1","state":"UNAVAILABLE","reason":""}, ...]``;
  ``{"ready": true}`` filters to the loaded ones.
- ``GET /v2/models/{m}/ready``: 200 (empty body) when loaded, 404 otherwise.
- A successful inference answers 200 ``application/json``
  ``{"model_name":"iris-lr","model_version":"v1","id":"<uuid>","parameters":{},
  "outputs":[{"name":"predict","shape":[2,1],"datatype":"INT64",
  "parameters":{"content_type":"np"},"data":[0,2]}]}`` plus CloudEvents ``ce-*`` headers.
- Input the model cannot take (wrong feature count, strings) answers a **plain-text 500**
  ``Internal Server Error`` (``text/plain; charset=utf-8``); a body that is not JSON or lacks
  ``inputs`` answers 422 ``{"detail":[...]}`` (FastAPI validation).

Surprise: ``mlserver start FOLDER`` replaces ``model_repository_root`` from ``settings.json`` with
FOLDER itself. So the workdir gets a ``models`` symlink to the model repository (MLServer's
recursive glob follows it); ``settings.json`` still names the real root for the record.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.ports import free_port, urlopen_direct, wait_http

__all__ = [
    "MLServerInstance",
    "mlserver_bin",
    "models_dir",
    "repo_root",
    "start_mlserver",
    "v2_request",
]

# Generous: on a small shared machine under load MLServer takes well over 30 s to start.
_STARTUP_TIMEOUT_S = 120.0
_STOP_GRACE_S = 5.0
_HTTP_TIMEOUT_S = 10.0


def repo_root() -> Path:
    """The project's root: the parent of ``devstack/``."""
    return Path(__file__).resolve().parent.parent


def _find_mlserver_bin() -> Path:
    path = repo_root() / ".venv-mlserver" / "bin" / "mlserver"
    if not path.is_file():
        raise FileNotFoundError(
            f"MLServer is not installed: {path} is missing. Run `make setup` to build its "
            "environment (.venv-mlserver)."
        )
    return path


def _find_models_dir() -> Path:
    path = repo_root() / ".cache" / "models"
    if not path.is_dir() or not any(path.glob("*/model-settings.json")):
        raise FileNotFoundError(
            f"The example models are missing: {path} holds no */model-settings.json. "
            "Run `make setup` to train them."
        )
    return path


def mlserver_bin() -> Path:
    """``<repo>/.venv-mlserver/bin/mlserver``; ``FileNotFoundError`` naming `make setup` if absent."""
    return _find_mlserver_bin()


def models_dir() -> Path:
    """``<repo>/.cache/models``; ``FileNotFoundError`` naming `make setup` if absent or empty."""
    return _find_models_dir()


def v2_request(features: list[list[float]]) -> dict[str, Any]:
    """An Open Inference Protocol request: one FP64 input ``input-0`` of shape ``[n, k]``."""
    if not features:
        raise ValueError("features must hold at least one row")
    width = len(features[0])
    if any(len(row) != width for row in features):
        raise ValueError("every feature row must have the same length")
    return {
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": [len(features), width],
                "data": [float(x) for row in features for x in row],
            }
        ]
    }


def _distinct_free_ports(count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _post(url: str, body: bytes | None = None, *, timeout: float = _HTTP_TIMEOUT_S) -> bytes:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = urllib.request.Request(url, data=body or b"", method="POST", headers=headers)  # noqa: S310
    with urlopen_direct(req, timeout) as resp:
        data: bytes = resp.read()
        return data


@dataclass
class MLServerInstance:
    """One running (or stopped) MLServer process and the ports it owns."""

    url: str
    http_port: int
    grpc_port: int
    metrics_port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    mlserver_bin: Path
    log_path: Path
    paused: bool = field(default=False)

    # -- lifecycle ---------------------------------------------------------------------------

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = _STARTUP_TIMEOUT_S) -> None:
        """Block until ``/v2/health/ready`` answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        ready_url = f"{self.url}/v2/health/ready"
        while True:
            if not self.is_alive():
                raise RuntimeError(
                    f"MLServer on {self.url} exited with {self.process.returncode} during "
                    f"startup; last log lines ({self.log_path}):\n{_tail(self.log_path)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"MLServer on {self.url} not ready within {timeout:.0f}s; last log lines "
                    f"({self.log_path}):\n{_tail(self.log_path)}"
                )
            try:
                wait_http(ready_url, min(0.5, remaining))
            except TimeoutError:
                continue
            return

    def stop(self, timeout: float = _STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds; reaps it."""
        if self.is_alive():
            self._signal(signal.SIGTERM)
            if self.paused:
                self._signal(signal.SIGCONT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        self.paused = False

    def kill(self) -> None:
        """SIGKILL, as if the instance died; reaps it."""
        if self.is_alive():
            self._signal(signal.SIGKILL)
            self.process.wait()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing (a hung instance)."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def restart(self, timeout: float = _STARTUP_TIMEOUT_S) -> None:
        """Stop if running, start again EMPTY on the same ports, wait until ready."""
        self.stop()
        self.process = _spawn(self.mlserver_bin, self.workdir, self.log_path)
        self.wait_ready(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        # The process leads its own session (start_new_session), so its group id is its pid:
        # signalling the group reaches any helper it forked, and nothing of ours.
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    # -- model repository --------------------------------------------------------------------

    def repository_index(self) -> list[dict[str, Any]]:
        """``POST /v2/repository/index``: every model of the repository with its state."""
        raw = _post(f"{self.url}/v2/repository/index", b"{}")
        entries: list[dict[str, Any]] = json.loads(raw)
        return entries

    def loaded_models(self) -> set[str]:
        """Names of the models whose state is READY."""
        return {e["name"] for e in self.repository_index() if e.get("state") == "READY"}

    def load(self, model: str) -> None:
        """``POST /v2/repository/models/{model}/load``; raises ``urllib.error.HTTPError`` on 404."""
        _post(f"{self.url}/v2/repository/models/{model}/load")

    def unload(self, model: str) -> None:
        """``POST /v2/repository/models/{model}/unload``; a model not loaded is not an error."""
        try:
            _post(f"{self.url}/v2/repository/models/{model}/unload")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise

    def unload_all(self) -> None:
        for model in self.loaded_models():
            self.unload(model)


def _spawn(binary: Path, workdir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(
        {
            "MLSERVER_PARALLEL_WORKERS": "0",
            "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(binary), "start", str(workdir)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_mlserver(
    models_dir: Path,
    workdir: Path,
    *,
    http_port: int | None = None,
    mlserver_bin: Path | None = None,
    log_path: Path | None = None,
    wait: bool = True,
    timeout: float = _STARTUP_TIMEOUT_S,
) -> MLServerInstance:
    """Start one empty MLServer serving the repository ``models_dir``; wait until ready.

    ``workdir`` receives ``settings.json``, the ``models`` symlink, MLServer's ``.metrics`` and
    ``.envs`` folders and (unless ``log_path`` says otherwise) ``mlserver.log``. gRPC and metrics
    ports are always fresh free ports, distinct from each other and from the HTTP port: a gRPC
    port clash is silent (SO_REUSEPORT). With ``wait=False`` call ``wait_ready()`` yourself
    (to start several instances in parallel).
    """
    binary = mlserver_bin if mlserver_bin is not None else _find_mlserver_bin()
    root = models_dir.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} does not exist")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    taken = {http_port} if http_port is not None else set()
    grpc_port, metrics_port, *rest = _distinct_free_ports(3 if http_port is None else 2, taken)
    port = http_port if http_port is not None else rest[0]

    link = workdir / "models"
    if link.is_symlink() or link.exists():
        if link.resolve() != root:
            raise FileExistsError(f"{link} exists and does not point at {root}")
    else:
        link.symlink_to(root, target_is_directory=True)

    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "load_models_at_startup": False,
        "parallel_workers": 0,
        # Overridden by `mlserver start FOLDER` (root := FOLDER); the symlink above makes it hold.
        "model_repository_root": str(root),
        "metrics_dir": str(workdir / ".metrics"),
        "environments_dir": str(workdir / ".envs"),
    }
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")

    log = (log_path if log_path is not None else workdir / "mlserver.log").resolve()
    instance = MLServerInstance(
        url=f"http://127.0.0.1:{port}",
        http_port=port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        workdir=workdir,
        process=_spawn(binary, workdir, log),
        mlserver_bin=binary,
        log_path=log,
    )
    if wait:
        try:
            instance.wait_ready(timeout)
        except BaseException:
            instance.kill()
            raise
    return instance
