"""Child server processes: started in their own session (Ctrl-C reaches only the benchmark, which
stops them in order), killed by the kernel if the benchmark itself dies (PR_SET_PDEATHSIG), and
stopped with SIGTERM then SIGKILL on every way out."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from devstack.ports import wait_http

ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the benchmark process goes away (Linux)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Server:
    name: str
    url: str
    pid: int
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Processes:
    """Owns every server the benchmark starts; ``stop_all`` is idempotent."""

    log_dir: Path
    _procs: list[tuple[Server, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        url: str,
        ready_path: str,
        env: dict[str, str] | None = None,
        cpu: int | None = None,
        timeout_s: float = 20.0,
    ) -> Server:
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        server = Server(name, url, proc.pid, log_path)
        self._procs.append((server, proc, log))
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        try:
            wait_http(url + ready_path, timeout_s)
        except TimeoutError as exc:
            code = proc.poll()
            state = f"exited with {code}" if code is not None else "still running"
            raise RuntimeError(
                f"{name} did not become ready ({state}): {exc}\n--- {log_path} ---\n"
                f"{server.log_tail()}"
            ) from None
        return server

    def stop_all(self, timeout_s: float = 10.0) -> None:
        while self._procs:
            server, proc, log = self._procs.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    print(f"{server.name} ignored SIGTERM; killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait()
            log.close()


def handle_stop_signals() -> None:
    """Ctrl-C raises KeyboardInterrupt (even when started with SIGINT ignored, as ``cmd &`` is) and
    SIGTERM raises SystemExit, so ``finally`` blocks stop the children either way."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_sigterm)
