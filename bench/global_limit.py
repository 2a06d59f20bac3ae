"""In-process micro-benchmark of the global rate limit (issue 13): what admission costs a request and
how many Redis round trips it makes, with 32 concurrent requests on one event loop.

Each "connection" is a task that loops: ``limiter.acquire()``, yield to the loop once (the request
would await its upstream there; background refills get to run), ``release()``. Three limiters:
no rate (the baseline: concurrency cap only), a bucket local to the process (the old per-replica
limit), and the global bucket in a real Redis (``router.global_rate``). CPU time is the process's
(``time.process_time``), so the Redis client's work for the refills is included; "added" is the
CPU per request over the baseline. Round trips per request = refill calls / admitted requests.
Medians of ``repeats`` runs. Targets: < 10 µs and < 0.05 round trips per request.

The loop admits ~250k requests/s, some 60x what one replica serves; at that pace a refill of the
largest batch (1,000 tokens) can still be in flight when the stock and its credit run out, so a few
requests are refused here that a real replica (a few thousand requests/s) would not see refused.

``python -m bench.global_limit [--redis-url URL]``; ``python -m bench`` includes its table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from router.errors import RateLimited
from router.global_rate import GlobalRates
from router.limits import LimitSpec, LocalRate, RateGate, TenantLimiter
from router.metrics import RouterMetrics
from router.redis_conn import PoolOptions, RedisTarget, close_redis, open_redis
from router.redis_keys import rate_key

CONNECTIONS = 32
RPS = 1_000_000.0  # the bench tenant's limit (bench/config.py): admission runs, never refuses
COST_TARGET_US = 10.0
TRIPS_TARGET = 0.05


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    cpu_us: float  # CPU per request, median
    added_us: float  # over the no-rate baseline
    trips: float  # Redis round trips per request
    refused: int


@dataclass(frozen=True, slots=True)
class GlobalLimitReport:
    rows: list[Row]
    requests: int
    redis: str

    def markdown(self) -> str:
        lines = [
            f"### Global rate limit: admission cost ({CONNECTIONS} concurrent requests, "
            f"{self.requests:,} requests a run, Redis {self.redis})",
            "",
            "| limiter | CPU / request | added | Redis round trips / request | refused |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.label} | {r.cpu_us:.2f} µs | {r.added_us:+.2f} µs | {r.trips:.4f} "
                f"| {r.refused} |"
            )
        lines.append("")
        lines.append(
            f"Targets: added < {COST_TARGET_US:g} µs and < {TRIPS_TARGET:g} round trips a request."
        )
        return "\n".join(lines) + "\n"


class CountingGates:
    """Counts the refill calls of the shared buckets (one Redis round trip each)."""

    def __init__(self, rates: GlobalRates) -> None:
        self.calls = 0
        script = rates.take_script

        async def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return await script(*args, **kwargs)  # type: ignore[arg-type]

        rates.take_script = counted  # type: ignore[assignment]


async def run_once(limiter: TenantLimiter, requests: int) -> tuple[float, int]:
    """(CPU seconds, refused) for ``requests`` admissions over CONNECTIONS tasks."""
    per_task = requests // CONNECTIONS
    refused = 0

    async def connection() -> None:
        nonlocal refused
        for _ in range(per_task):
            try:
                limiter.acquire()
            except RateLimited:
                refused += 1
                await asyncio.sleep(0)
                continue
            await asyncio.sleep(0)
            limiter.release()

    started = time.process_time()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return time.process_time() - started, refused


async def measure_async(target: RedisTarget, requests: int, repeats: int) -> GlobalLimitReport:
    client = open_redis(target, PoolOptions(max_connections=32, retries=0))
    rates = GlobalRates(client, RouterMetrics(), replica_id=f"bench-{uuid.uuid4().hex[:8]}")
    counter = CountingGates(rates)
    tenant = f"bench-limit-{uuid.uuid4().hex[:8]}"
    try:
        await rates.join()
        info = await client.info("server")
        version = str(info.get("redis_version", "?")) if isinstance(info, dict) else "?"
        kinds: list[tuple[str, Callable[[float, float], RateGate] | None, int | None]] = [
            ("no rate limit (concurrency cap only)", None, None),
            ("per-replica bucket (local)", lambda rps, burst: LocalRate(rps, burst), int(RPS)),
            (
                "global bucket in Redis (batches)",
                lambda rps, burst: rates.bucket(tenant, rps, burst),
                int(RPS),
            ),
        ]
        samples: dict[str, list[float]] = {label: [] for label, _, _ in kinds}
        trips: dict[str, list[float]] = {label: [] for label, _, _ in kinds}
        refused: dict[str, int] = dict.fromkeys(samples, 0)
        for _ in range(repeats):
            for label, factory, rps in kinds:
                spec = LimitSpec(100_000, float(rps) if rps else None, rps)
                limiter = TenantLimiter(spec, rate_factory=factory)
                calls_before = counter.calls
                cpu, denied = await run_once(limiter, requests)
                samples[label].append(cpu / requests * 1e6)
                trips[label].append((counter.calls - calls_before) / requests)
                refused[label] += denied
        base = statistics.median(samples[kinds[0][0]])
        rows = [
            Row(
                label,
                statistics.median(samples[label]),
                statistics.median(samples[label]) - base,
                statistics.median(trips[label]),
                refused[label],
            )
            for label, _, _ in kinds
        ]
        return GlobalLimitReport(rows, requests, version)
    finally:
        await rates.aclose()
        await client.delete(rate_key(tenant))
        await close_redis(client)


def measure(
    redis_url: str, *, cluster: bool = False, requests: int = 64_000, repeats: int = 5
) -> GlobalLimitReport:
    target = RedisTarget(url=redis_url, cluster=cluster)
    return asyncio.run(measure_async(target, requests, repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.global_limit", description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-cluster", action="store_true")
    parser.add_argument("--requests", type=int, default=64_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    report = measure(
        args.redis_url, cluster=args.redis_cluster, requests=args.requests, repeats=args.repeats
    )
    print(report.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
