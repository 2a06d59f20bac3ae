"""The fallback load generator, used only when wrk is unavailable: ``python -m bench.pyload`` reads
a JSON LoadSpec on stdin and prints a JSON LoadResult.

A closed loop like wrk: ``connections`` workers, each sending its next request as soon as the last
one answered, on one uvloop in its own process. It is far slower than wrk, so at 32 connections it
is often the bottleneck itself; tables made with it say so.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.load import LoadResult, LoadSpec
from bench.procs import die_with_parent


def percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def _worker(
    session: aiohttp.ClientSession,
    spec: LoadSpec,
    worker: int,
    deadline: float,
    latencies: list[float],
) -> int:
    errors = 0
    headers = dict(spec.headers)
    if spec.unit_mode == "fixed":
        headers["X-Unit-Id"] = spec.unit_id
    n = 0
    while time.perf_counter() < deadline:
        n += 1
        if spec.unit_mode == "new":
            headers["X-Unit-Id"] = f"{spec.unit_id}-{worker}-{n}"
        started = time.perf_counter()
        try:
            async with session.post(spec.url, data=spec.body, headers=headers) as resp:
                await resp.read()
                ok = 200 <= resp.status < 400
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        latencies.append(time.perf_counter() - started)
        errors += not ok
    return errors


async def generate(spec: LoadSpec) -> LoadResult:
    connector = aiohttp.TCPConnector(limit=spec.connections)
    timeout = aiohttp.ClientTimeout(total=10)
    latencies: list[float] = []
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
    ) as session:
        started = time.perf_counter()
        deadline = started + spec.duration_s
        errors = await asyncio.gather(
            *(_worker(session, spec, w, deadline, latencies) for w in range(spec.connections))
        )
        elapsed = time.perf_counter() - started
    ordered = sorted(ms * 1e3 for ms in latencies)
    return LoadResult(
        requests=len(ordered),
        duration_s=elapsed,
        rps=len(ordered) / elapsed,
        p50_ms=percentile(ordered, 50),
        p75_ms=percentile(ordered, 75),
        p90_ms=percentile(ordered, 90),
        p99_ms=percentile(ordered, 99),
        errors=sum(errors),
    )


def spec_to_json(spec: LoadSpec) -> str:
    data: dict[str, Any] = asdict(spec)
    data["body"] = base64.b64encode(spec.body).decode()
    return json.dumps(data)


def spec_from_json(text: str) -> LoadSpec:
    data = json.loads(text)
    data["body"] = base64.b64decode(data["body"])
    return LoadSpec(**data)


def run_pyload(spec: LoadSpec, *, cpus: set[int] | None = None) -> LoadResult:
    """Run one load in a child process (so the generator never shares this process's loop)."""
    argv = [sys.executable, "-m", "bench.pyload"]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    done = subprocess.run(
        argv,
        input=spec_to_json(spec),
        capture_output=True,
        text=True,
        timeout=spec.duration_s + 60,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        preexec_fn=die_with_parent,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.pyload exited {done.returncode}: {done.stderr.strip()}")
    return LoadResult(**json.loads(done.stdout))


def main() -> int:
    spec = spec_from_json(sys.stdin.read())
    result = uvloop.run(generate(spec))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
