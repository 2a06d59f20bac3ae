"""Run wrk with ``bench/post.lua`` and parse what it prints.

wrk's percentiles come from its HdrHistogram and are printed rounded, with a unit, in the
``Latency Distribution`` block (``--latency``); they are converted to milliseconds here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.load import LoadResult, LoadSpec
from bench.procs import die_with_parent

LUA = Path(__file__).with_name("post.lua")

_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$")
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),")
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(RuntimeError):
    pass


def parse_wrk(output: str) -> LoadResult:
    """Parse ``wrk --latency`` output (raises WrkError when a needed line is missing)."""
    percentiles: dict[str, float] = {}
    requests: int | None = None
    duration_s: float | None = None
    rps: float | None = None
    errors = 0
    in_distribution = False
    for line in output.splitlines():
        if line.strip() == "Latency Distribution":
            in_distribution = True
            continue
        if in_distribution:
            match = _PERCENTILE.match(line)
            if match:
                percentiles[match.group(1)] = float(match.group(2)) * _TO_MS[match.group(3)]
                continue
            in_distribution = False
        if match := _REQUESTS.match(line):
            requests = int(match.group(1))
            duration_s = float(match.group(2)) * _TO_MS[match.group(3)] / 1e3
        elif match := _RPS.match(line):
            rps = float(match.group(1))
        elif match := _NON_2XX.search(line):
            errors += int(match.group(1))
        elif match := _SOCKET.search(line):
            errors += sum(int(g) for g in match.groups())
    missing = [p for p in ("50", "75", "90", "99") if p not in percentiles]
    if requests is None or duration_s is None or rps is None or missing:
        raise WrkError(f"unexpected wrk output (missing {missing or 'totals'}):\n{output}")
    return LoadResult(
        requests=requests,
        duration_s=duration_s,
        rps=rps,
        p50_ms=percentiles["50"],
        p75_ms=percentiles["75"],
        p90_ms=percentiles["90"],
        p99_ms=percentiles["99"],
        errors=errors,
    )


def run_wrk(spec: LoadSpec, *, cpus: set[int] | None = None) -> LoadResult:
    env = {
        **os.environ,
        "BENCH_BODY": spec.body.decode(),
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in spec.headers.items()),
        "BENCH_UNIT_MODE": spec.unit_mode,
        "BENCH_UNIT_ID": spec.unit_id,
    }
    argv = [
        "wrk",
        f"-t{spec.threads}",
        f"-c{spec.connections}",
        f"-d{spec.duration_s}s",
        "--latency",
        "-s",
        str(LUA),
        spec.url,
    ]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    done = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=spec.duration_s + 60,
        preexec_fn=die_with_parent,
        check=False,
    )
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout}")
    return parse_wrk(done.stdout)


def wrk_version() -> str:
    """``wrk 4.1.0-3+b2`` from the first line of ``wrk -v``."""
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    match = re.match(r"wrk\s+(?:\S+/)?(\S+)", done.stdout + done.stderr)
    return f"wrk {match.group(1)}" if match else "wrk"


def ensure_wrk() -> str | None:
    """wrk's path; when it is not on PATH, try ``apt-get install -y wrk`` (then with an update)."""
    found = shutil.which("wrk")
    if found or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    attempts = (
        [["apt-get", "install", "-y", "wrk"]],
        [["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]],
    )
    for commands in attempts:
        print(
            f"wrk is not on PATH: running {' && '.join(map(' '.join, commands))}", file=sys.stderr
        )
        for command in commands:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                check=False,
            )
            if done.returncode != 0:
                print(f"  {command[1]} failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
                break
        found = shutil.which("wrk")
        if found:
            print(f"installed wrk at {found}", file=sys.stderr)
            return found
    return None
