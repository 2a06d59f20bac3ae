"""``make dashboard-png``'s arithmetic on real exposition text: counter rates and histogram
quantiles as the Grafana panels compute them, and a PNG written from them."""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client import generate_latest

from devstack.dashboard import Scrape, Series, _parse, draw
from router.metrics import RouterMetrics


def test_rates_quantiles_and_the_picture(tmp_path: Path) -> None:
    metrics = RouterMetrics()
    series = Series([Scrape(0.0, _parse(generate_latest(metrics.registry).decode()))])
    for _ in range(30):
        metrics.requests.labels("globex", "control", "200").inc()
        metrics.request_duration.observe(0.003)  # inside the (0.0025, 0.005] bucket
    for _ in range(10):
        metrics.requests.labels("globex", "canary", "502").inc()
    series.scrapes.append(Scrape(2.0, _parse(generate_latest(metrics.registry).decode())))

    by_variant = series.rate_by("router_requests_total", ("variant",))
    assert by_variant == {(("variant", "canary"),): [5.0], (("variant", "control"),): [15.0]}
    errors = series.rate_by("router_requests_total", ("code",), code="!2")
    assert errors == {(("code", "502"),): [5.0]}
    (p50,) = series.quantile("router_request_duration_seconds", 0.5)
    assert 2.5 < p50 <= 5.0
    assert all(math.isnan(v) for v in series.quantile("router_upstream_duration_seconds", 0.5))

    out = tmp_path / "dashboard.png"
    draw(series, out, note="test")
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
