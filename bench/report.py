"""Medians, derived numbers, the issue's targets, and the markdown/JSON renderings."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from bench.cpu import CpuUsage
from bench.load import LoadResult

Kind = Literal["latency", "throughput"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: float
    limit: float
    op: Literal["<=", ">="]
    unit: str

    @property
    def passed(self) -> bool:
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit


@dataclass(frozen=True, slots=True)
class Run:
    result: LoadResult
    cpu: CpuUsage


@dataclass
class Report:
    machine: dict[str, str]
    settings: dict[str, Any]
    labels: dict[str, str]  # target key ("a".."f") -> description
    middle: dict[str, str]  # target key -> the server whose CPU per request is reported
    runs: dict[str, dict[Kind, list[Run]]] = field(default_factory=dict)
    router_metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, target: str, kind: Kind, result: LoadResult, cpu: CpuUsage) -> None:
        self.runs.setdefault(target, {}).setdefault(kind, []).append(Run(result, cpu))

    def median(self, target: str, kind: Kind, metric: str) -> float:
        runs = self.runs.get(target, {}).get(kind, [])
        if not runs:
            return float("nan")
        return statistics.median(float(getattr(r.result, metric)) for r in runs)

    def cpu_us_per_request(self, target: str, kind: Kind = "throughput") -> float:
        """Median CPU time of the target's middle process per request answered."""
        server = self.middle.get(target)
        runs = self.runs.get(target, {}).get(kind, [])
        values = [
            r.cpu.servers_s[server] / r.result.requests * 1e6
            for r in runs
            if server in r.cpu.servers_s and r.result.requests
        ]
        return statistics.median(values) if values else float("nan")

    def foreign_shares(self) -> list[float]:
        return [
            r.cpu.foreign_share for kinds in self.runs.values() for rs in kinds.values() for r in rs
        ]

    def derived(self) -> dict[str, float]:
        lat_p50 = {t: self.median(t, "latency", "p50_ms") for t in self.labels}
        lat_p99 = {t: self.median(t, "latency", "p99_ms") for t in self.labels}
        rps = {t: self.median(t, "throughput", "rps") for t in self.labels}
        return {
            "rps_ratio_c_over_b": rps["c"] / rps["b"],
            "added_p50_ms_c_minus_a": lat_p50["c"] - lat_p50["a"],
            "added_p99_ms_c_minus_a": lat_p99["c"] - lat_p99["a"],
            "proxy_added_p50_ms_b_minus_a": lat_p50["b"] - lat_p50["a"],
            "proxy_added_p99_ms_b_minus_a": lat_p99["b"] - lat_p99["a"],
            "assignment_cached_p50_ms_d_minus_c": lat_p50["d"] - lat_p50["c"],
            "assignment_redis_p50_ms_e_minus_c": lat_p50["e"] - lat_p50["c"],
            "cpu_us_per_request_a_upstream": self.cpu_us_per_request("a"),
            "cpu_us_per_request_b_bare_proxy": self.cpu_us_per_request("b"),
            "cpu_us_per_request_c_router": self.cpu_us_per_request("c"),
            "cpu_ratio_b_over_c": self.cpu_us_per_request("b") / self.cpu_us_per_request("c"),
            "rps_ratio_f_over_c": rps.get("f", math.nan) / rps["c"],
            "cpu_us_per_request_f_router_sagemaker": self.cpu_us_per_request("f"),
            "cpu_ratio_f_over_c": self.cpu_us_per_request("f") / self.cpu_us_per_request("c"),
            "foreign_cpu_share_median": statistics.median(self.foreign_shares() or [math.nan]),
            "foreign_cpu_share_max": max(self.foreign_shares() or [math.nan]),
        }

    def checks(self) -> list[Check]:
        d = self.derived()
        return [
            Check("warmroute req/s vs bare proxy (c/b), 32 conns", d["rps_ratio_c_over_b"] * 100, 75, ">=", "%"),
            Check("added latency p50 (c-a), 1 at a time", d["added_p50_ms_c_minus_a"], 0.4, "<=", "ms"),
            Check("added latency p99 (c-a), 1 at a time", d["added_p99_ms_c_minus_a"], 1.2, "<=", "ms"),
            Check("assignment from cache (d-c), p50", d["assignment_cached_p50_ms_d_minus_c"], 0.05, "<=", "ms"),
            Check("assignment with a Redis round trip (e-c), p50", d["assignment_redis_p50_ms_e_minus_c"], 0.3, "<=", "ms"),
            Check("SageMaker tenant req/s vs v2 tenant (f/c), 32 conns", d["rps_ratio_f_over_c"] * 100, 90, ">=", "%"),
            Check("SageMaker tenant CPU/request vs v2 tenant (f/c)", d["cpu_ratio_f_over_c"] * 100, 115, "<=", "%"),
        ]  # fmt: skip

    def errors(self) -> int:
        return sum(
            r.result.errors for kinds in self.runs.values() for rs in kinds.values() for r in rs
        )

    def markdown(self) -> str:
        s = self.settings
        m = self.machine
        lines = [
            "## warmroute benchmark",
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, aiohttp {m['aiohttp']}, "
            f"uvloop {m['uvloop']}, load generator {m['loadgen']}, Redis {m['redis']}; "
            f"1-min load average before the run {m.get('loadavg_1m_before', '?')}.",
            f"Method: one at a time = {s['latency_flags']}, throughput = {s['throughput_flags']}; "
            f"{s['duration_s']} s per run after a {s['warmup_s']} s warm-up; runs alternated "
            f"target by target, {s['rounds']} round(s), medians shown; "
            f"{'processes pinned (--pin)' if s['pinned'] else 'no CPU pinning'}.",
            "",
            "| target | p50 ms, 1 at a time | p99 ms, 1 at a time | req/s, 32 conns "
            "| p99 ms, 32 conns |",
            "|---|--:|--:|--:|--:|",
        ]
        for key, label in self.labels.items():
            p50 = self.median(key, "latency", "p50_ms")
            p99 = self.median(key, "latency", "p99_ms")
            rps = self.median(key, "throughput", "rps")
            tail = self.median(key, "throughput", "p99_ms")
            rps_text = "—" if math.isnan(rps) else f"{rps:,.0f}"  # NaN: not measured
            tail_text = "—" if math.isnan(tail) else f"{tail:.2f}"
            lines.append(f"| ({key}) {label} | {p50:.3f} | {p99:.3f} | {rps_text} | {tail_text} |")
        d = self.derived()
        lines += [
            "",
            "| measure | value | target (issue) | |",
            "|---|--:|--:|---|",
        ]
        for check in self.checks():
            value = f"{check.value:.1f} %" if check.unit == "%" else f"{check.value:+.3f} ms"
            limit = f"{check.op.replace('<=', '≤').replace('>=', '≥')} {check.limit:g} {check.unit}"
            verdict = "PASS" if check.passed else "MISS"
            lines.append(f"| {check.name} | {value} | {limit} | {verdict} |")
        lines.append(
            f"| (info) bare proxy added latency (b-a), p50 / p99 | "
            f"{d['proxy_added_p50_ms_b_minus_a']:+.3f} / {d['proxy_added_p99_ms_b_minus_a']:+.3f} ms"
            " | | |"
        )
        lines += [
            "",
            "CPU per request at 32 connections (the middle process's CPU time ÷ requests; hardly "
            f"moved by other load): upstream (a) {d['cpu_us_per_request_a_upstream']:.0f} µs, "
            f"bare proxy (b) {d['cpu_us_per_request_b_bare_proxy']:.0f} µs, "
            f"warmroute (c) {d['cpu_us_per_request_c_router']:.0f} µs, "
            f"warmroute SageMaker tenant (f) {d['cpu_us_per_request_f_router_sagemaker']:.0f} µs; "
            f"bare proxy ÷ warmroute = {d['cpu_ratio_b_over_c'] * 100:.0f} % "
            "(what c/b req/s would be with a core to spare for each process).",
            f"Processes outside the benchmark used {d['foreign_cpu_share_median'] * 100:.0f} % "
            f"(median; max {d['foreign_cpu_share_max'] * 100:.0f} %) of the machine's CPU during "
            "the measured runs.",
        ]
        if self.settings.get("loadgen_fallback"):
            lines += ["", "**Load generator: Python fallback (wrk unavailable); numbers are not "
                      "comparable with wrk runs and req/s at 32 connections is bounded by it.**"]  # fmt: skip
        if self.warnings:
            lines += ["", *(f"- warning: {w}" for w in self.warnings)]
        lines += ["", "Targets are information only; the benchmark never fails on them."]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        targets: dict[str, Any] = {}
        for key, label in self.labels.items():
            entry: dict[str, Any] = {"label": label}
            for kind, results in self.runs.get(key, {}).items():
                entry[kind] = {
                    "median": {
                        metric: self.median(key, kind, metric)
                        for metric in ("p50_ms", "p99_ms", "rps")
                    },
                    "rounds": [
                        {
                            **asdict(r.result),
                            "cpu": {**asdict(r.cpu), "foreign_share": r.cpu.foreign_share},
                        }
                        for r in results
                    ],
                }
            targets[key] = entry
        return {
            "machine": self.machine,
            "settings": self.settings,
            "targets": targets,
            "derived": self.derived(),
            "checks": [{**asdict(c), "passed": c.passed} for c in self.checks()],
            "router_metrics": self.router_metrics,
            "warnings": self.warnings,
        }

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path = directory / "latest.json"
        md_path = directory / "latest.md"
        json_path.write_text(json.dumps(_finite(self.to_json()), indent=2, allow_nan=False) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path


def _finite(value: Any) -> Any:
    """NaN (a measure that was not taken) becomes null, so the file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(*, loadgen: str, redis: str) -> dict[str, str]:
    return {
        "nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "loadgen": loadgen,
        "redis": redis,
        "kernel": platform.release(),
    }  # fmt: skip
