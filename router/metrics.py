"""Prometheus metrics in a registry owned by the app (never the process-global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.rollout.metrics import RolloutMetrics

# Sub-millisecond resolution matters: the router's own overhead is a fraction of a millisecond.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "router_requests", "Requests answered", ["tenant", "variant", "code"], registry=r
        )
        self.request_duration = Histogram(
            "router_request_duration_seconds",
            "Whole request time inside the router",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "router_upstream_duration_seconds",
            "Time waiting on the multi-model endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.assignments = Counter(
            "router_assignments", "Variant decisions by what decided", ["source"], registry=r
        )
        self.redis_errors = Counter(
            "router_redis_errors", "Redis calls that failed or ran out of budget", registry=r
        )
        self.config_reloads = Counter(
            "router_config_reloads", "Config reloads by outcome", ["result"], registry=r
        )
        self.cold_starts = Counter(
            "router_cold_starts",
            "Requests that had to wait for their model to load",
            ["tenant", "model"],
            registry=r,
        )
        self.model_loads = Counter(
            "router_model_loads",
            "Model loads the router started on an instance (lazy load on miss)",
            ["endpoint", "model"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "router_upstream_retries",
            "Requests sent again to another instance after the connection failed before any "
            "answer, by cause (refused, reset, disconnected)",
            ["endpoint", "reason"],
            registry=r,
        )
        self.ondemand_loads = Counter(
            "router_ondemand_loads",
            "Models the router loaded on demand (held nowhere, or not where the request went)",
            ["endpoint"],
            registry=r,
        )
        self.config_generation = Gauge(
            "router_config_generation", "Generation of the serving config snapshot", registry=r
        )
        # Processing (router/processing/): steps, fallback, ensembles, selection, shadow traffic.
        self.step_failures = Counter(
            "router_step_failures",
            "Processing steps that failed (rejected, error, timeout)",
            ["tenant", "stage", "step", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "router_fallbacks",
            "Requests answered by the fallback model, by the primary's error",
            ["tenant", "model", "reason"],
            registry=r,
        )
        self.ensemble_members = Counter(
            "router_ensemble_members",
            "Ensemble member calls by result (ok or the error code)",
            ["tenant", "model", "result"],
            registry=r,
        )
        self.model_selections = Counter(
            "router_model_selections",
            "Models chosen from the input (select_model)",
            ["tenant", "model"],
            registry=r,
        )
        self.shadow_requests = Counter(
            "router_shadow_requests",
            "Shadow copies by result (ok, error, timeout, dropped)",
            ["tenant", "result"],
            registry=r,
        )
        self.shadow_duration = Histogram(
            "router_shadow_duration_seconds",
            "Time the shadow model took to answer",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_agreement = Counter(
            "router_shadow_agreement",
            "Shadow answers compared with the primary's (agree, disagree, error)",
            ["tenant", "result"],
            registry=r,
        )
        self.shadow_in_flight = Gauge(
            "router_shadow_in_flight", "Shadow copies running", ["tenant"], registry=r
        )
        # Progressive rollout (router/rollout/).
        self.rollout = RolloutMetrics(r)
        # Pre-create the label sets that must exist from the start (dashboards, alerts).
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        self.redis_errors.inc(0)
