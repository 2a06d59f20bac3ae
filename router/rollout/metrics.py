"""The rollout's metrics, registered in the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from router.rollout.decision import Event


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.weight = Gauge(
            "router_rollout_weight",
            "Canary weight (percent) in effect on this replica",
            ["tenant", "experiment"],
            registry=registry,
        )
        self.events = Counter(
            "router_rollout_events",
            "Rollout changes this replica made (step, paused, resumed, rolled_back, complete)",
            ["tenant", "event"],
            registry=registry,
        )

    def event(self, tenant: str, event: Event) -> None:
        self.events.labels(tenant, event).inc()
