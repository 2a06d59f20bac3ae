"""``python -m bench.coldstart`` (``make bench-coldstart``): what a first request costs, with and without
the preloader, and right after a scale-out.

Setup, all real and on loopback: two empty MLServer instances (``devstack.mlserver``), the router as a
subprocess (``python -m router``) in front of them, Redis (the machine's, ``--redis-url``), and a
config with the four example models, each the default model of ``--tenants`` tenants.

Each round:

1. every model is unloaded from both instances, then each tenant sends its first request: the router
   lazy-loads on the instance it picked (**no preloader**);
2. every model is unloaded again, ``python -m preloader --config DIR --once`` runs, then each tenant
   sends its first request (**after --once**);
3. each tenant sends ``--warm`` more requests (**warm**, the baseline).

Then once: the preloader starts in watch mode, a third MLServer starts, the router's config gains its
URL (admin reload); each tenant's first request right after that (**scale-out, new instance
cold**), then, once the preloader has published the new instance warm, ``--after`` requests per
tenant, which round-robin onto it (**scale-out, new instance warm**).

Requests are sequential on one keep-alive connection; latency is measured at the client. The router's
``router_cold_starts_total`` and ``router_model_loads_total`` (from its /metrics) are read before and
after each phase. Target (issue 4): after ``--once``, first-request p99 within 10 % of the warm p99
and zero cold starts. Writes ``bench/results/coldstart.md``.

Then the many-models phase (``bench/coldstart_many.py``; ``--many-only`` runs just it, ``--skip-many``
leaves it out): more models than one instance holds, placement ``spread`` against ``replicate``.
Writes ``bench/results/coldstart-many.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.procs import ROOT, Processes, Server, handle_stop_signals
from devstack import mlserver as mls
from devstack.ports import free_port
from router.redis_keys import preloader_lock_key, traffic_key, warm_flag_key, warm_map_key

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"iris-lr": 4, "iris-tree": 4, "iris-knn": 4, "diabetes-lr": 10}  # model -> features
ROW = [5.1, 3.5, 1.4, 0.2, 0.03, 0.05, 0.06, 0.02, -0.04, -0.03]


def body_for(model: str) -> bytes:
    width = MODELS[model]
    payload = {
        "inputs": [
            {"name": "input-0", "shape": [1, width], "datatype": "FP64", "data": ROW[:width]}
        ]
    }
    return json.dumps(payload).encode()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__)
    parser.add_argument("--tenants", type=int, default=5, help="tenants per model")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the first three phases")
    parser.add_argument("--warm", type=int, default=10, help="warm requests per tenant per round")
    parser.add_argument("--after", type=int, default=3, help="requests per tenant after scale-out")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="1 round, 2 tenants per model")
    parser.add_argument(
        "--many-requests", type=int, default=600, help="requests per mode in the many-models phase"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip-many", action="store_true", help="no many-models phase")
    which.add_argument("--many-only", action="store_true", help="only the many-models phase")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.tenants, args.warm, args.many_requests = 1, 2, 5, 200
    if min(args.tenants, args.rounds, args.warm, args.after, args.many_requests) < 1:
        parser.error("--tenants, --rounds, --warm, --after and --many-requests must be >= 1")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- config -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    directory: Path
    endpoint: str
    tenants: dict[str, str]  # tenant -> model

    def write_endpoints(self, urls: list[str]) -> None:
        endpoints = {"endpoints": {self.endpoint: {"kind": "v2", "instances": urls}}}
        _write(self.directory / "endpoints.yaml", endpoints)


def write_config(directory: Path, urls: list[str], endpoint: str, per_model: int) -> Setup:
    (directory / "tenants").mkdir(parents=True, exist_ok=True)
    setup = Setup(directory, endpoint, {})
    setup.write_endpoints(urls)
    for model in MODELS:
        sample = json.loads(body_for(model))
        for i in range(per_model):
            tenant = f"t{i}-{model}"
            setup.tenants[tenant] = model
            config = {
                "endpoint": endpoint,
                "model": model,
                "limits": {"timeout_ms": 30000},
                "preload": {"priority": 1, "sample": sample},
            }
            _write(directory / "tenants" / f"{tenant}.yaml", config)
    return setup


def _write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")  # JSON is YAML
    tmp.replace(path)


# -- the router, from outside --------------------------------------------------------------------


class Client:
    """One keep-alive connection to the router; times each request at the client."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def invoke(self, tenant: str, body: bytes) -> float:
        started = time.perf_counter()
        self._conn.request(
            "POST",
            f"/v1/tenants/{tenant}/invocations",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        resp = self._conn.getresponse()
        answer = resp.read()
        elapsed = time.perf_counter() - started
        if resp.status != 200:
            raise RuntimeError(f"{tenant}: HTTP {resp.status}: {answer[:300]!r}")
        return elapsed

    def get(self, path: str, method: str = "GET") -> bytes:
        self._conn.request(method, path)
        resp = self._conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data[:300]!r}")
        return data

    def counters(self) -> tuple[float, float]:
        """(router_cold_starts_total, router_model_loads_total), summed over labels."""
        cold = loads = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith("router_cold_starts_total{"):
                cold += float(line.rsplit(" ", 1)[1])
            elif line.startswith("router_model_loads_total{"):
                loads += float(line.rsplit(" ", 1)[1])
        return cold, loads

    def total(self, metric: str) -> float:
        """A counter from the router's /metrics, summed over its labels."""
        prefix = metric + "{"
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in self.get("/metrics").decode().splitlines()
            if line.startswith(prefix)
        )

    def close(self) -> None:
        self._conn.close()


@dataclass
class Phase:
    label: str
    latencies: list[float] = field(default_factory=list)
    by_model: dict[str, list[float]] = field(default_factory=dict)
    cold_starts: float = 0.0
    model_loads: float = 0.0

    @contextlib.contextmanager
    def counting(self, client: Client) -> Iterator[None]:
        cold, loads = client.counters()
        yield
        cold_after, loads_after = client.counters()
        self.cold_starts += cold_after - cold
        self.model_loads += loads_after - loads

    def stats(self) -> tuple[float, float, float]:
        """p50, p99, max in milliseconds (p99: nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan"), float("nan"), float("nan")
        rank = max(0, min(len(ordered) - 1, round(0.99 * len(ordered) + 0.5) - 1))
        return (
            statistics.median(ordered) * 1000,
            ordered[rank] * 1000,
            ordered[-1] * 1000,
        )


def first_requests(client: Client, setup: Setup, phase: Phase, per_tenant: int = 1) -> None:
    """``per_tenant`` passes over every tenant: the same interleaving of models (and of the
    router's round robin over instances) in every phase, so the phases compare like for like."""
    with phase.counting(client):
        for _ in range(per_tenant):
            for tenant, model in setup.tenants.items():
                elapsed = client.invoke(tenant, body_for(model))
                phase.latencies.append(elapsed)
                phase.by_model.setdefault(model, []).append(elapsed)


# -- processes ----------------------------------------------------------------------------------


def start_instances(
    workdir: Path, count: int, repository: Path | None = None, prefix: str = "mlserver"
) -> list[mls.MLServerInstance]:
    """``count`` empty MLServer instances over ``repository`` (the example models), started in
    parallel."""
    root = repository if repository is not None else mls.models_dir()
    instances = [
        mls.start_mlserver(root, workdir / f"{prefix}-{i}", wait=False) for i in range(count)
    ]
    try:
        for instance in instances:
            instance.wait_ready()
    except BaseException:
        for instance in instances:
            instance.stop()
        raise
    return instances


def preload_once(setup: Setup, redis_url: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "preloader", "--config", str(setup.directory), "--once",
         "--redis-url", redis_url],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "WARMROUTE_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"preloader --once exited {result.returncode}:\n{result.stdout}")
    return time.perf_counter() - started


def wait_published(redis_url: str, endpoint: str, url: str, timeout_s: float = 60.0) -> float:
    """Seconds until the preloader lists every model warm on ``url``."""
    client = redis.Redis.from_url(redis_url)
    started = time.monotonic()
    with contextlib.closing(client):
        while time.monotonic() - started < timeout_s:
            raw = client.hget(warm_map_key(endpoint), url)
            if raw is not None and set(json.loads(raw)["models"]) >= set(MODELS):
                return time.monotonic() - started
            time.sleep(0.05)
    raise RuntimeError(f"the preloader did not publish {url} warm within {timeout_s:.0f}s")


def cleanup_redis(redis_url: str, endpoint: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    with contextlib.closing(client), contextlib.suppress(redis.RedisError, OSError):
        keys = [warm_map_key(endpoint), warm_flag_key(endpoint), preloader_lock_key(endpoint)]
        keys += [k.decode() for k in client.scan_iter(match=traffic_key(endpoint, 0)[:-1] + "*")]
        client.delete(*keys)


# -- report -------------------------------------------------------------------------------------


def table(phases: list[Phase]) -> str:
    lines = [
        "| phase | requests | p50 ms | p99 ms | max ms | cold starts | model loads |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in phases:
        p50, p99, worst = phase.stats()
        lines.append(
            f"| {phase.label} | {len(phase.latencies)} | {p50:.2f} | {p99:.2f} | {worst:.2f} "
            f"| {phase.cold_starts:.0f} | {phase.model_loads:.0f} |"
        )
    return "\n".join(lines)


def per_model(phases: list[Phase]) -> str:
    """Each model's worst and median first request per phase: where a load shows up."""
    head = " | ".join(f"{p.label}: median / max ms" for p in phases)
    lines = [f"| model | {head} |", "|---|" + "---:|" * len(phases)]
    for model in MODELS:
        cells = []
        for phase in phases:
            found = phase.by_model.get(model, [])
            cells.append(
                f"{statistics.median(found) * 1000:.2f} / {max(found) * 1000:.2f}" if found else "-"
            )
        lines.append(f"| {model} | {' | '.join(cells)} |")
    return "\n".join(lines)


def verdict(warm: Phase, preloaded: Phase, scaled: list[Phase]) -> list[str]:
    warm_p99 = warm.stats()[1]
    first_p99 = preloaded.stats()[1]
    ratio = first_p99 / warm_p99 - 1
    cold = preloaded.cold_starts + sum(p.cold_starts for p in scaled)
    return [
        f"- first-request p99 after `--once`: {first_p99:.2f} ms vs warm p99 {warm_p99:.2f} ms "
        f"({ratio:+.1%}); target within +10 %: **{'PASS' if ratio <= 0.10 else 'MISS'}**",
        f"- cold starts with the preloader (after `--once` and through the scale-out): {cold:.0f}; "
        f"target 0: **{'PASS' if cold == 0 else 'MISS'}**",
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"1-min load average {os.getloadavg()[0]:.2f} at the end"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handle_stop_signals()
    nonce = f"{int(time.time())}-{os.getpid()}"
    if not args.many_only:
        code = classic(args, nonce)
        if code != 0 or args.skip_many:
            return code
    return many(args, nonce)


def many(args: argparse.Namespace, nonce: str) -> int:
    """The many-models phase; writes ``bench/results/coldstart-many.md``."""
    # Imported here: bench.coldstart_many builds on this module's helpers.
    from bench import coldstart_many

    settings = coldstart_many.ManySettings(requests=args.many_requests)
    try:
        with tempfile.TemporaryDirectory(prefix="warmroute-coldstart-many-") as tmp:
            procs = Processes(Path(tmp))
            try:
                results = coldstart_many.run(procs, Path(tmp), args.redis_url, nonce, settings)
            finally:
                procs.stop_all()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    report = coldstart_many.render(results, settings) + f"\n\nMachine: {machine()}."
    print(report)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "coldstart-many.md"
    path.write_text(report + "\n")
    log(f"wrote {path}")
    return 0


def classic(args: argparse.Namespace, nonce: str) -> int:
    """The two-instance phases; writes ``bench/results/coldstart.md``."""
    endpoint = f"coldstart-{nonce}"
    cold = Phase("first request, no preloader")
    preloaded = Phase("first request, after `preloader --once`")
    warm = Phase("warm requests (baseline)")
    scale_cold = Phase("scale-out: first requests, new instance not warm yet")
    scale_warm = Phase("scale-out: requests once the new instance is warm")
    notes: list[str] = []
    instances: list[mls.MLServerInstance] = []
    try:
        with tempfile.TemporaryDirectory(prefix="warmroute-coldstart-") as tmp:
            work = Path(tmp)
            procs = Processes(work)
            try:
                log("starting two MLServer instances")
                instances = start_instances(work, 2)
                setup = write_config(
                    work / "config", [i.url for i in instances], endpoint, args.tenants
                )
                router = start_router(procs, setup, args.redis_url)
                client = Client(router.url)
                for rnd in range(1, args.rounds + 1):
                    for instance in instances:
                        instance.unload_all()
                    first_requests(client, setup, cold)
                    for instance in instances:
                        instance.unload_all()
                    took = preload_once(setup, args.redis_url)
                    notes.append(f"round {rnd}: `preloader --once` took {took:.2f} s")
                    first_requests(client, setup, preloaded)
                    first_requests(client, setup, warm, per_tenant=args.warm)
                    log(f"round {rnd}/{args.rounds} done")
                scale_out(
                    procs, setup, client, args, instances, work, scale_cold, scale_warm, notes
                )
                client.close()
            finally:
                procs.stop_all()
                for instance in instances:
                    instance.stop()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        cleanup_redis(args.redis_url, endpoint)
    phases = [warm, cold, preloaded, scale_cold, scale_warm]
    report = render(args, phases, verdict(warm, preloaded, [scale_cold, scale_warm]), notes)
    print(report)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "coldstart.md"
    path.write_text(report + "\n")
    log(f"wrote {path}")
    return 0


def start_router(procs: Processes, setup: Setup, redis_url: str) -> Server:
    port = free_port()
    return procs.start(
        "router",
        [sys.executable, "-m", "router", "--config", str(setup.directory), "--host", "127.0.0.1",
         "--port", str(port), "--redis-url", redis_url, "--shutdown-timeout", "2"],
        url=f"http://127.0.0.1:{port}",
        ready_path="/readyz",
        env={"WARMROUTE_LOG_LEVEL": "WARNING"},
    )  # fmt: skip


def scale_out(
    procs: Processes,
    setup: Setup,
    client: Client,
    args: argparse.Namespace,
    instances: list[mls.MLServerInstance],
    work: Path,
    before: Phase,
    after: Phase,
    notes: list[str],
) -> None:
    port = free_port()
    procs.start(
        "preloader",
        [sys.executable, "-m", "preloader", "--config", str(setup.directory), "--host",
         "127.0.0.1", "--port", str(port), "--redis-url", args.redis_url,
         "--check-interval", "1"],
        url=f"http://127.0.0.1:{port}",
        ready_path="/ready",
        env={"WARMROUTE_LOG_LEVEL": "WARNING"},
        timeout_s=60,
    )  # fmt: skip
    log("preloader watching; starting a third MLServer")
    third = mls.start_mlserver(mls.models_dir(), work / "mlserver-2")
    instances.append(third)
    setup.write_endpoints([i.url for i in instances])
    client.get("/v1/admin/reload", method="POST")  # answers once the new instance list serves
    first_requests(client, setup, before)
    published = wait_published(args.redis_url, setup.endpoint, third.url)
    notes.append(
        f"scale-out: the preloader published the new instance warm {published:.2f} s after "
        "the router's reload"
    )
    time.sleep(1.5)  # the router re-reads the warm map every second
    first_requests(client, setup, after, per_tenant=args.after)


def render(
    args: argparse.Namespace, phases: list[Phase], checks: list[str], notes: list[str]
) -> str:
    return "\n".join(
        [
            "# Cold-start benchmark (`make bench-coldstart`)",
            "",
            f"Machine: {machine()}.",
            f"Settings: {args.rounds} rounds, {args.tenants} tenants per model x "
            f"{len(MODELS)} models, {args.warm} warm requests per tenant per round, "
            f"{args.after} requests per tenant after the scale-out; sequential requests on one "
            "keep-alive connection through `python -m router`, two MLServer 1.7.1 instances "
            "(a third for the scale-out).",
            "",
            table(phases),
            "",
            "Per model (every tenant's first request of the phase):",
            "",
            per_model(phases[:3]),
            "",
            *checks,
            "",
            *[f"- {n}" for n in notes],
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
