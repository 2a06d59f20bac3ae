"""In-process micro-benchmark of progressive rollout (issue 12): what a rollout adds to a request, and
what its background tick costs.

Hot path: ``InvocationService.count_request`` and the upstream-time observation, as the router calls
them for every request, timed for a tenant without a rollout (baseline) and one with a rollout (a
dict hit and a few list increments more). CPU per request is ``time.process_time`` over ``requests``
calls, median of ``repeats`` runs; "added" is over the baseline. Target: < 5 µs a request.

Tick: one ``RolloutController.tick()`` against a real Redis (flush the counts, read the state and
window in one Lua call, judge) after a batch of requests; the table shows its median wall time and
the Redis round trips a request that makes at a replica's typical pace (one tick every 0.5 s).

``python -m bench.rollout [--redis-url URL]``; ``python -m bench`` includes its table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass

from router.assignment import Assigner
from router.metrics import RouterMetrics
from router.redis_conn import PoolOptions, RedisTarget, close_redis, open_redis
from router.rollout.controller import RolloutController
from router.rollout.store import RolloutStore
from router.service import InvocationService
from tenancy.models import Experiment, Tenant

COST_TARGET_US = 5.0
TICK_INTERVAL_S = 0.5
PACE_RPS = 2_000  # requests a second one replica serves in the table's round-trip column


@dataclass(frozen=True, slots=True)
class RolloutBenchReport:
    base_us: float
    with_rollout_us: float
    tick_ms: float
    requests: int

    @property
    def added_us(self) -> float:
        return self.with_rollout_us - self.base_us

    def markdown(self) -> str:
        trips = 1 / (PACE_RPS * TICK_INTERVAL_S)
        return "\n".join(
            [
                f"### Progressive rollout: hot-path cost ({self.requests:,} requests a run)",
                "",
                "| | CPU / request | added |",
                "|---|---:|---:|",
                f"| tenant without rollout (request count) | {self.base_us:.3f} µs | |",
                f"| tenant with a rollout | {self.with_rollout_us:.3f} µs "
                f"| {self.added_us:+.3f} µs |",
                "",
                f"Background tick (flush + read + judge, one Lua call): {self.tick_ms:.2f} ms "
                f"median, every {TICK_INTERVAL_S:g} s per rollout: {trips:.4f} Redis round trips "
                f"a request at {PACE_RPS:,} requests/s; none on the request path.",
                f"Target: added < {COST_TARGET_US:g} µs a request.",
                "",
            ]
        )


def _tenant(name: str, rollout: bool) -> Tenant:
    experiment = Experiment.model_validate(
        {
            "name": f"{name}-exp",
            "kind": "canary",
            "variants": [
                {"name": "control", "model": "iris-lr", "weight": 90},
                {"name": "canary", "model": "iris-tree", "weight": 10},
            ],
            **({"rollout": {"steps": [10, 50, 100], "step_s": 600}} if rollout else {}),
        }
    )
    return Tenant(endpoint="mme", model="iris-lr", experiment=experiment)


def _run(service: InvocationService, tenant: str, requests: int) -> float:
    """CPU seconds for ``requests`` requests' accounting, alternating the two variants."""
    count, observe = service.count_request, service.rollouts.get
    started = time.process_time()
    for i in range(requests):
        variant = "canary" if i % 10 == 0 else "control"
        count(tenant, variant, 200)
        counter = observe(tenant)  # as InvocationService.invoke does after the upstream call
        if counter is not None:
            counter.observe(variant, 0.004)
    return time.process_time() - started


async def measure_async(target: RedisTarget, requests: int, repeats: int) -> RolloutBenchReport:
    client = open_redis(target, PoolOptions(max_connections=4, retries=0))
    metrics = RouterMetrics()
    service = InvocationService(metrics, Assigner(client, metrics))
    plain, rolling = "bench-plain", f"bench-rollout-{uuid.uuid4().hex[:8]}"
    controller = RolloutController(RolloutStore(client), metrics.rollout, lambda _t, _w: None)
    controller.configure({plain: _tenant(plain, False), rolling: _tenant(rolling, True)})
    service.rollouts = controller.counters
    try:
        base, with_rollout, ticks = [], [], []
        await controller.tick()  # starts the rollout in Redis
        for _ in range(repeats):
            base.append(_run(service, plain, requests) / requests * 1e6)
            with_rollout.append(_run(service, rolling, requests) / requests * 1e6)
            started = time.perf_counter()
            await controller.tick()
            ticks.append((time.perf_counter() - started) * 1000)
        return RolloutBenchReport(
            statistics.median(base),
            statistics.median(with_rollout),
            statistics.median(ticks),
            requests,
        )
    finally:
        run = controller.runs[rolling]
        keys = [run.keys.state] + [run.keys.window(seq) for seq in range(1, 4)]
        await client.delete(*keys)
        await close_redis(client)


def measure(
    redis_url: str, *, cluster: bool = False, requests: int = 200_000, repeats: int = 5
) -> RolloutBenchReport:
    target = RedisTarget(url=redis_url, cluster=cluster)
    return asyncio.run(measure_async(target, requests, repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-cluster", action="store_true")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    report = measure(
        args.redis_url, cluster=args.redis_cluster, requests=args.requests, repeats=args.repeats
    )
    print(report.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
