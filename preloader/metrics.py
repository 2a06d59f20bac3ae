"""The preloader's Prometheus metrics, in a registry owned by its app (never the global one)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# How long a model stayed on an instance before it was unloaded: minutes to days.
AGE_BUCKETS = (
    10.0,
    60.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    4 * 3600.0,
    12 * 3600.0,
    86400.0,
    7 * 86400.0,
)
UNLOAD_REASONS = ("placement", "idle", "capacity")

# A warm-up is a model load plus one inference: from milliseconds to minutes for large models.
WARM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class PreloaderMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.models_warm = Gauge(
            "preloader_models_warm",
            "Warm-set models warm on every instance of the endpoint (sagemaker: last warm-up ok)",
            ["endpoint"],
            registry=r,
        )
        self.warm_duration = Histogram(
            "preloader_warm_duration_seconds",
            "Time to warm one model on one instance: load plus warm-up inference",
            ["endpoint"],
            buckets=WARM_BUCKETS,
            registry=r,
        )
        self.warm_failures = Counter(
            "preloader_warm_failures",
            "Model loads or warm-up inferences that failed",
            ["endpoint"],
            registry=r,
        )
        self.leader = Gauge(
            "preloader_leader",
            "1 while this process is the active preloader of the endpoint",
            ["endpoint"],
            registry=r,
        )
        self.instances = Gauge(
            "preloader_instances",
            "Instances the endpoint has, as last seen",
            ["endpoint"],
            registry=r,
        )

        self.placed_models = Gauge(
            "preloader_placed_models",
            "Distinct models the placement puts on the endpoint's instances",
            ["endpoint"],
            registry=r,
        )
        self.copies = Gauge(
            "preloader_copies",
            "Model copies the placement puts on the endpoint's instances (a model on 3 counts 3)",
            ["endpoint"],
            registry=r,
        )
        self.unloads = Counter(
            "preloader_unloads",
            "Models unloaded from an instance, by reason: placement (moved elsewhere, after the "
            "new copy is ready), idle (on-demand, unused for unload_idle_s), capacity (room for "
            "placed models)",
            ["endpoint", "reason"],
            registry=r,
        )
        self.age_at_unload = Histogram(
            "preloader_model_age_at_unload_seconds",
            "How long a model had been on an instance (as the preloader saw it) when unloaded",
            ["endpoint"],
            buckets=AGE_BUCKETS,
            registry=r,
        )

    def forget(self, endpoint: str) -> None:
        """Drop an endpoint's warm gauges (it left the config, or another process leads it now)."""
        for gauge in (self.models_warm, self.instances, self.placed_models, self.copies):
            with contextlib.suppress(KeyError):
                gauge.remove(endpoint)
