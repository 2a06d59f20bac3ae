"""``make dashboard-png``: the Grafana dashboard's main panels, drawn from a live stack.

Starts the ``make run`` stack (or uses one already running: ``--router URL --preloader URL``),
drives a mixed load through it (three tenants, the canary's units, a few bad inputs, a missing key,
an unknown tenant), scrapes both processes' ``/metrics`` every ``--step`` seconds, and draws what the
dashboard's main panels (``dashboards/warmroute.json``) would show, computed the same way (rates of
counters, quantiles of histogram buckets) with matplotlib. Halfway through, when it started the
stack itself, it rolls the example canary back (weight 0) and reloads, as the README's walkthrough
does. Output: ``docs/dashboard.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from prometheus_client.parser import text_string_to_metric_families

from devstack.mlserver import repo_root
from devstack.stack import PRELOADER_PORT, ROUTER_PORT, running_stack
from tenancy.text import DefaultsHelpFormatter

IRIS = [5.1, 3.5, 1.4, 0.2]
DIABETES = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]
Labels = tuple[tuple[str, str], ...]


def _v2(row: list[float]) -> bytes:
    data = ",".join(str(x) for x in row)
    return (
        f'{{"inputs":[{{"name":"input-0","shape":[1,{len(row)}],"datatype":"FP64",'
        f'"data":[{data}]}}]}}'
    ).encode()


@dataclass
class Scrape:
    at: float
    samples: dict[str, dict[Labels, float]]


@dataclass
class Series:
    """Scrapes of both processes over time."""

    scrapes: list[Scrape] = field(default_factory=list)

    def times(self) -> list[float]:
        start = self.scrapes[0].at
        return [s.at - start for s in self.scrapes[1:]]

    def _pairs(self) -> Iterator[tuple[Scrape, Scrape]]:
        return itertools.pairwise(self.scrapes)

    def rate_by(self, name: str, by: tuple[str, ...], **match: str) -> dict[Labels, list[float]]:
        """``sum by (by) (rate(name{match}))`` for each interval between scrapes."""
        keys: set[Labels] = set()
        per_step: list[dict[Labels, float]] = []
        for before, after in self._pairs():
            sums: dict[Labels, float] = defaultdict(float)
            for labels, value in after.samples.get(name, {}).items():
                given = dict(labels)
                if any(not _matches(given.get(k, ""), v) for k, v in match.items()):
                    continue
                old = before.samples.get(name, {}).get(labels, 0.0)
                key = tuple((k, given.get(k, "")) for k in by)
                sums[key] += max(0.0, value - old) / (after.at - before.at)
            keys.update(sums)
            per_step.append(sums)
        return {key: [step.get(key, 0.0) for step in per_step] for key in sorted(keys)}

    def quantile(self, name: str, q: float, **match: str) -> list[float]:
        """``histogram_quantile(q, sum by (le) (rate(name_bucket{match})))`` per interval, ms."""
        buckets = self.rate_by(f"{name}_bucket", ("le",), **match)
        bounds = sorted(((float(dict(k)["le"]), v) for k, v in buckets.items()), key=lambda b: b[0])
        out: list[float] = []
        for step in range(len(self.scrapes) - 1):
            counts = [(le, values[step]) for le, values in bounds]
            total = counts[-1][1] if counts else 0.0
            out.append(_bucket_quantile(counts, q * total) * 1000 if total > 0 else float("nan"))
        return out

    def gauge(self, name: str, by: tuple[str, ...]) -> dict[Labels, list[float]]:
        found: dict[Labels, list[float]] = defaultdict(list)
        for scrape in self.scrapes[1:]:
            seen: dict[Labels, float] = defaultdict(float)
            for labels, value in scrape.samples.get(name, {}).items():
                given = dict(labels)
                seen[tuple((k, given.get(k, "")) for k in by)] += value
            for key, value in seen.items():
                found[key].append(value)
        return dict(found)


def _matches(value: str, pattern: str) -> bool:
    if pattern.startswith("!"):
        return not value.startswith(pattern[1:])
    return value.startswith(pattern)


def _bucket_quantile(counts: list[tuple[float, float]], rank: float) -> float:
    """Linear interpolation inside the bucket holding ``rank``, as Prometheus does."""
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in counts:
        if count >= rank:
            if upper_bound == float("inf"):
                return lower_bound
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (upper_bound - lower_bound) * share
        lower_bound, lower_count = upper_bound, count
    return lower_bound


def _parse(text: str) -> dict[str, dict[Labels, float]]:
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def _scrape(session: aiohttp.ClientSession, urls: list[str]) -> Scrape:
    merged: dict[str, dict[Labels, float]] = {}
    for url in urls:
        async with session.get(f"{url}/metrics") as resp:
            merged.update(_parse(await resp.text()))
    return Scrape(time.monotonic(), merged)


async def _one(session: aiohttp.ClientSession, router: str, rng: random.Random) -> None:
    roll = rng.random()
    headers = {"Content-Type": "application/json"}
    tenant, body = "globex", _v2(IRIS)
    if roll < 0.30:
        tenant = "acme"
        headers["Authorization"] = "Bearer demo-acme-key"
    elif roll < 0.45:
        tenant, body = "initech", _v2(DIABETES)
    elif roll < 0.46:
        body = _v2(IRIS[:3])  # three features for a four-feature model: the model server's 500
    elif roll < 0.465:
        tenant = "acme"  # no key: 401
    elif roll < 0.468:
        tenant = "nobody"  # 404
    else:
        headers["X-Unit-Id"] = f"user-{rng.randrange(5000)}"
    url = f"{router}/v1/tenants/{tenant}/invocations"
    with contextlib.suppress(aiohttp.ClientError):
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()


async def _drive(
    router: str, metrics_urls: list[str], seconds: float, step: float, rps: float,
    midway: Path | None,
) -> Series:  # fmt: skip
    series = Series()
    rng = random.Random(7)
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:
        series.scrapes.append(await _scrape(session, metrics_urls))
        start = time.monotonic()
        next_scrape = start + step
        rolled_back = midway is None
        pending: set[asyncio.Task[None]] = set()
        sent = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rps)
            while sent < due:
                task = asyncio.create_task(_one(session, router, rng))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            if now >= next_scrape:
                series.scrapes.append(await _scrape(session, metrics_urls))
                next_scrape += step
            if not rolled_back and now - start >= seconds / 2 and midway is not None:
                _roll_back(midway)
                async with session.post(f"{router}/v1/admin/reload") as resp:
                    await resp.read()
                rolled_back = True
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        series.scrapes.append(await _scrape(session, metrics_urls))
    return series


def _roll_back(config: Path) -> None:
    path = config / "tenants" / "globex.yaml"
    path.write_text(
        path.read_text().replace("model: iris-knn, weight: 20", "model: iris-knn, weight: 0")
    )


def _label(key: Labels) -> str:
    return " ".join(v for _, v in key) or "all"


def draw(series: Series, out: Path, *, note: str) -> None:
    t = series.times()
    fig, axes = plt.subplots(3, 3, figsize=(16, 11), constrained_layout=True)
    fig.suptitle(f"warmroute — dashboards/warmroute.json, main panels ({note})", fontsize=14)

    def lines(ax: Axes, data: dict[Labels, list[float]], title: str, unit: str) -> None:
        for key, values in data.items():
            if any(v > 0 for v in values):
                ax.plot(t, values, label=_label(key))
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")

    lines(axes[0][0], series.rate_by("router_requests_total", ("tenant", "variant")),
          "Requests by tenant and variant", "req/s")  # fmt: skip
    lines(axes[0][1], series.rate_by("router_requests_total", ("tenant", "code"), code="!2"),
          "Errors by tenant and status", "req/s")  # fmt: skip
    ok = series.rate_by("router_requests_total", ("variant",), tenant="globex", code="200")
    total = [sum(v) for v in zip(*ok.values(), strict=True)] if ok else []
    share = {k: [x / s if s else 0.0 for x, s in zip(v, total, strict=True)] for k, v in ok.items()}
    lines(axes[0][2], share, "Variant share, globex (canary rolled back midway)", "share")
    latency: dict[Labels, list[float]] = {
        (("q", f"p{int(q * 100)}"),): series.quantile("router_request_duration_seconds", q)
        for q in (0.5, 0.9, 0.99)
    }
    lines(axes[1][0], latency, "Request latency percentiles", "ms")
    upstream: dict[Labels, list[float]] = {
        (("q", f"local-mme p{int(q * 100)}"),): series.quantile(
            "router_upstream_duration_seconds", q, endpoint="local-mme"
        )
        for q in (0.5, 0.99)
    }
    lines(axes[1][1], upstream, "Upstream latency by endpoint", "ms")
    whole = series.rate_by("router_request_duration_seconds_sum", ())
    count = series.rate_by("router_request_duration_seconds_count", ())
    up = series.rate_by("router_upstream_duration_seconds_sum", ())
    up_count = series.rate_by("router_upstream_duration_seconds_count", ())

    def mean(total: dict[Labels, list[float]], n: dict[Labels, list[float]]) -> list[float]:
        if not total or not n:
            return []
        pairs = zip(next(iter(total.values())), next(iter(n.values())), strict=True)
        return [s / c * 1000 if c else float("nan") for s, c in pairs]

    request_ms, upstream_ms = mean(whole, count), mean(up, up_count)
    overhead = [a - b for a, b in zip(request_ms, upstream_ms, strict=False)]
    means: dict[Labels, list[float]] = {
        (("m", "request"),): request_ms,
        (("m", "upstream"),): upstream_ms,
        (("m", "router overhead"),): overhead,
    }
    lines(axes[1][2], means, "Router overhead vs upstream time (mean)", "ms")
    lines(axes[2][0], series.rate_by("router_assignments_total", ("source",)),
          "Assignments by source", "per s")  # fmt: skip
    warmth: dict[Labels, list[float]] = {
        (("w", "warm models"),): series.gauge("preloader_models_warm", ())[()],
        (("w", "instances"),): series.gauge("preloader_instances", ())[()],
    } if series.gauge("preloader_models_warm", ()) else {}  # fmt: skip
    lines(axes[2][1], warmth, "Warm models and instances (preloader)", "count")
    lines(axes[2][2], series.rate_by("router_cold_starts_total", ("model",))
          | series.rate_by("router_config_reloads_total", ("result",)),
          "Cold starts by model; config reloads", "per s")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.dashboard", description=__doc__,
        formatter_class=DefaultsHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=repo_root() / "docs" / "dashboard.png",
                        help="PNG to write")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load")
    parser.add_argument("--step", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--rps", type=float, default=60.0, help="requests per second sent")
    parser.add_argument("--router", help="a running router's URL (default: start the stack)")
    parser.add_argument("--preloader", help="a running preloader's URL (with --router)")
    args = parser.parse_args(argv)
    if args.router:
        urls = [args.router] + ([args.preloader] if args.preloader else [])
        series = asyncio.run(_drive(args.router, urls, args.seconds, args.step, args.rps, None))
        draw(series, args.out, note=f"{args.rps:.0f} req/s offered for {args.seconds:.0f} s")
        print(args.out)
        return 0
    state = repo_root() / ".cache" / "dashboard"
    config = state / "config"
    shutil.rmtree(config, ignore_errors=True)
    shutil.copytree(repo_root() / "examples" / "config", config)
    with running_stack(config, state):
        router = f"http://127.0.0.1:{ROUTER_PORT}"
        urls = [router, f"http://127.0.0.1:{PRELOADER_PORT}"]
        series = asyncio.run(_drive(router, urls, args.seconds, args.step, args.rps, config))
    draw(
        series, args.out, note=f"make run stack, {args.rps:.0f} req/s offered, {args.seconds:.0f} s"
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
