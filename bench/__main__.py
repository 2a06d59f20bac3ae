"""``python -m bench``: start the upstream, the bare proxy and warmroute, load them in alternation,
print the table and write ``bench/results/latest.{json,md}``. See ``bench/__init__.py`` for how the
processes share the cores."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis

from bench import config as cfg
from bench import global_limit, pipeline, rollout, sagemaker_clients
from bench.cpu import CpuMeter, CpuUsage
from bench.load import LoadResult, LoadSpec, UnitMode
from bench.procs import Processes, Server, handle_stop_signals
from bench.pyload import run_pyload
from bench.report import Kind, Report, machine_info
from bench.wrk import ensure_wrk, run_wrk, wrk_version
from devstack.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results"
BODY = (
    b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",'
    b' "data": [5.1, 3.5, 1.4, 0.2]}]}'
)
INFER_PATH = f"/v2/models/{cfg.MODEL}/infer"
UPSTREAM_CPU, SERVER_CPU, LOADGEN_CPU = 0, 1, 0  # with --pin

Runner = Callable[[LoadSpec], LoadResult]


@dataclass(frozen=True, slots=True)
class Target:
    key: str
    label: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    unit_mode: UnitMode = "fixed"
    throughput: bool = True  # also measured at 32 connections


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds; medians shown")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each run")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1-s runs, one round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads at --connections")
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if possible"
    )
    parser.add_argument(
        "--pin", action="store_true", help="pin upstream+loadgen to CPU 0, server to 1"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where latest.{json,md} go")
    parser.add_argument(
        "--serve", action="store_true", help="start the three servers, print their URLs, wait"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 1, 1, 1
    if min(args.duration, args.rounds, args.warmup, args.connections, args.threads) < 1:
        parser.error("--duration, --rounds, --warmup, --connections, --threads must be >= 1")
    args.threads = min(args.threads, args.connections)
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def choose_loadgen(wanted: str, pin: bool) -> tuple[Runner, str, bool]:
    """(runner, description, is_fallback)."""
    cpus = {LOADGEN_CPU} if pin else None
    if wanted != "python":
        if ensure_wrk():
            return (lambda spec: run_wrk(spec, cpus=cpus)), wrk_version(), False
        if wanted == "wrk":
            raise SystemExit("wrk is not available and could not be installed")
        log("wrk is unavailable: falling back to the Python load generator (bench.pyload)")
    return (lambda spec: run_pyload(spec, cpus=cpus)), "bench.pyload (Python fallback)", True


def redis_version(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        with contextlib.closing(client):
            return str(client.info("server")["redis_version"])
    except (redis.RedisError, OSError):
        return None


def delete_assignments(url: str, experiment: str) -> int:
    """Delete the canary's stored assignments (the experiment name is unique to this run)."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=1)
    deleted = 0
    with contextlib.closing(client):
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"*{experiment}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
    return deleted


def start_servers(
    procs: Processes, workdir: Path, args: argparse.Namespace, nonce: str
) -> tuple[Server, Server, Server, cfg.BenchConfig]:
    py = sys.executable
    up_port, proxy_port, router_port = free_port(), free_port(), free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    upstream = procs.start(
        "upstream",
        [py, "-m", "bench.upstream", "--port", str(up_port)],
        url=up_url,
        ready_path="/v2/health/ready",
        cpu=UPSTREAM_CPU if args.pin else None,
    )
    proxy = procs.start(
        "bare_proxy",
        [py, "-m", "bench.bare_proxy", "--port", str(proxy_port), "--upstream", up_url],
        url=f"http://127.0.0.1:{proxy_port}",
        ready_path="/healthz",
        cpu=SERVER_CPU if args.pin else None,
    )
    bench_config = cfg.write_config(workdir / "config", up_url, nonce)
    router = procs.start(
        "router",
        [
            py,
            "-m",
            "router",
            "--config",
            str(bench_config.directory),
            "--host",
            "127.0.0.1",
            "--port",
            str(router_port),
            "--redis-url",
            args.redis_url,
            "--shutdown-timeout",
            "2",
        ],
        url=f"http://127.0.0.1:{router_port}",
        ready_path="/readyz",
        # Dummy credentials for the SageMaker tenant (the stub checks no signature), no IMDS look-up.
        env={
            "WARMROUTE_LOG_LEVEL": "WARNING",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_EC2_METADATA_DISABLED": "true",
        },
        cpu=SERVER_CPU if args.pin else None,
    )
    return upstream, proxy, router, bench_config


def make_targets(
    upstream: Server, proxy: Server, router: Server, bench_config: cfg.BenchConfig
) -> list[Target]:
    def headers(key: str) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    invoke = router.url + "/v1/tenants/{}/invocations"
    key, canary_key = bench_config.api_key, bench_config.canary_api_key
    sm_key = bench_config.sm_api_key
    return [
        Target("a", "direct to the upstream", upstream.url + INFER_PATH, headers(key)),
        Target("b", "bare aiohttp proxy", proxy.url + INFER_PATH, headers(key)),
        Target("c", "warmroute (key, limits, metrics)", invoke.format(cfg.TENANT), headers(key)),
        Target(
            "d",
            "warmroute canary, same unit (cached assignment)",
            invoke.format(cfg.CANARY_TENANT),
            headers(canary_key),
            "fixed",
            throughput=False,
        ),
        Target(
            "e",
            "warmroute canary, new unit each request (Redis)",
            invoke.format(cfg.CANARY_TENANT),
            headers(canary_key),
            "new",
            throughput=False,
        ),
        Target(
            "f",
            "warmroute, SageMaker tenant (signed InvokeEndpoint to the same stub)",
            invoke.format(cfg.SM_TENANT),
            headers(sm_key),
        ),
    ]


def probe(target: Target) -> None:
    """One request through the real path: it must answer 200 with an inference response."""
    headers = {**target.headers, "X-Unit-Id": "bench-probe"}
    request = urllib.request.Request(  # noqa: S310 (loopback)
        target.url, data=BODY, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"({target.key}) {target.url}: HTTP {exc.code}: {exc.read()!r}") from exc
    if b'"outputs"' not in body:
        raise RuntimeError(f"({target.key}) {target.url}: unexpected answer {body[:200]!r}")


def router_metrics(router: Server) -> dict[str, float]:
    """The router's request, assignment and Redis-error counters (evidence for the table)."""
    with urllib.request.urlopen(router.url + "/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    wanted = ("router_requests_total", "router_assignments_total", "router_redis_errors_total")
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def measure(
    run: Runner, meter: CpuMeter, target: Target, kind: Kind, args: argparse.Namespace, tag: str
) -> tuple[LoadResult, CpuUsage]:
    connections, threads = (1, 1) if kind == "latency" else (args.connections, args.threads)
    spec = LoadSpec(
        url=target.url,
        connections=connections,
        threads=threads,
        duration_s=args.warmup,
        body=BODY,
        headers=target.headers,
        unit_mode=target.unit_mode,
        unit_id=f"{tag}-warm" if target.unit_mode == "new" else "bench-unit",
    )
    run(spec)  # warm-up: connections, caches, the allocator
    unit_id = f"{tag}-run" if target.unit_mode == "new" else "bench-unit"
    meter.start()
    result = run(replace(spec, duration_s=args.duration, unit_id=unit_id))
    return result, meter.stop()


def benchmark(
    args: argparse.Namespace, report: Report, run: Runner, meter: CpuMeter, targets: list[Target]
) -> None:
    nonce = report.settings["nonce"]
    for rnd in range(1, args.rounds + 1):
        plan: list[tuple[Target, Kind]] = [(t, "latency") for t in targets]
        plan += [(t, "throughput") for t in targets if t.throughput]
        for target, kind in plan:
            tag = f"u{nonce}-r{rnd}-{target.key}-{kind}"
            result, cpu = measure(run, meter, target, kind, args, tag)
            report.add(target.key, kind, result, cpu)
            note = f"  {result.errors} ERRORS" if result.errors else ""
            log(
                f"round {rnd}/{args.rounds} {kind:<10} ({target.key}) "
                f"p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms  "
                f"{result.rps:10,.0f} req/s  others {cpu.foreign_share:4.0%} CPU{note}"
            )


def serve_forever(upstream: Server, proxy: Server, router: Server, targets: list[Target]) -> None:
    log(f"upstream   {upstream.url}  (pid {upstream.pid})")
    log(f"bare proxy {proxy.url}  (pid {proxy.pid})")
    log(f"warmroute  {router.url}  (pid {router.pid})")
    for t in targets:
        hdrs = " ".join(f"-H '{k}: {v}'" for k, v in t.headers.items())
        log(f"({t.key}) curl -s {hdrs} -H 'X-Unit-Id: u1' --data '{BODY.decode()}' {t.url}")
    log("serving; Ctrl-C stops everything")
    while True:
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handle_stop_signals()
    run, loadgen, fallback = choose_loadgen(args.loadgen, args.pin)
    redis_ver = redis_version(args.redis_url)
    nonce = f"{int(time.time())}-{os.getpid()}"
    report = Report(
        machine=machine_info(loadgen=loadgen, redis=redis_ver or "unreachable"),
        settings={
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "latency_flags": "-c1 -t1 --latency" if not fallback else "1 connection",
            "throughput_flags": f"-c{args.connections} -t{args.threads}"
            if not fallback
            else f"{args.connections} connections",
            "loadgen_fallback": fallback,
            "pinned": args.pin,
            "nonce": nonce,
        },
        labels={},
        middle={"a": "upstream", "b": "bare_proxy", "c": "router", "f": "router"},
    )
    if redis_ver is None:
        report.warnings.append(
            f"Redis at {args.redis_url} is unreachable: (e) measures the hash fallback, not a round trip"
        )
    load_before = os.getloadavg()[0]
    report.machine["loadavg_1m_before"] = f"{load_before:.2f}"
    if load_before > 0.5:
        report.warnings.append(
            f"the machine was busy before the run (1-min load average {load_before:.2f}): "
            "other processes competed for the cores; expect noise"
        )
    m = report.machine
    log(
        f"machine: nproc={m['nproc']} cpu={m['cpu']!r} python={m['python']} "
        f"aiohttp={m['aiohttp']} uvloop={m['uvloop']} loadgen={loadgen!r} redis={m['redis']}"
    )
    procs: Processes | None = None
    clients: list[sagemaker_clients.ClientCost] = []
    experiment: str | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="warmroute-bench-") as tmp:
            procs = Processes(Path(tmp))
            upstream, proxy, router, bench_config = start_servers(procs, Path(tmp), args, nonce)
            experiment = bench_config.experiment
            targets = make_targets(upstream, proxy, router, bench_config)
            report.labels = {t.key: t.label for t in targets}
            for target in targets:
                probe(target)
            if args.serve:
                serve_forever(upstream, proxy, router, targets)
            log(
                f"{args.rounds} round(s) x {len(targets)} latency + "
                f"{sum(t.throughput for t in targets)} throughput runs, "
                f"{args.warmup}+{args.duration} s each"
            )
            meter = CpuMeter({s.name: s.pid for s in (upstream, proxy, router)})
            benchmark(args, report, run, meter, targets)
            report.router_metrics = router_metrics(router)
            # The SageMaker path's client alone, stock aiobotocore beside the router's.
            clients = sagemaker_clients.measure(upstream.url, 500 if args.quick else 5000)
            report.machine["loadavg_1m_after"] = f"{os.getloadavg()[0]:.2f}"
            procs.stop_all()
    except KeyboardInterrupt:
        log("interrupted: stopping the servers")
        return 130
    except RuntimeError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        if procs is not None:
            procs.stop_all()
        if experiment is not None and redis_ver is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                deleted = delete_assignments(args.redis_url, experiment)
                log(f"deleted {deleted} stored assignments of experiment {experiment} from Redis")
    if report.errors():
        report.warnings.append(
            f"{report.errors()} requests failed (non-2xx or socket errors); see latest.json"
        )
    if statistics.median(report.foreign_shares() or [0.0]) > 0.05:
        report.warnings.append(
            "other processes used more than 5 % of the CPU during the runs: latency tails and "
            "req/s are noisy; CPU per request is the steadier comparison"
        )
    if report.router_metrics.get("router_redis_errors_total", 0) > 0:
        report.warnings.append(
            "the router counted Redis errors: some (e) requests were decided by the hash fallback"
        )
    json_path, md_path = report.write(args.results)
    print(report.markdown())
    if clients:
        print(sagemaker_clients.markdown(clients))
        (args.results / "sagemaker_clients.md").write_text(sagemaker_clients.markdown(clients))
    log(f"wrote {json_path} and {md_path}")
    # Processing costs, in-process: each built-in step, a three-step pipeline, shadowing at 10 %.
    steps = pipeline.measure(iterations=2_000 if args.quick else 20_000)
    print(steps.markdown())
    (args.results / "pipeline.md").write_text(steps.markdown())
    # The global rate limit's admission cost and Redis round trips a request (issue 13).
    if redis_ver is not None:
        limit = global_limit.measure(
            args.redis_url,
            requests=16_000 if args.quick else 64_000,
            repeats=1 if args.quick else 5,
        )
        print(limit.markdown())
        (args.results / "global_limit.md").write_text(limit.markdown())
        # What a progressive rollout adds to a request (issue 12): target < 5 µs, no round trip.
        rolling = rollout.measure(
            args.redis_url,
            requests=20_000 if args.quick else 200_000,
            repeats=1 if args.quick else 5,
        )
        print(rolling.markdown())
        (args.results / "rollout.md").write_text(rolling.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
