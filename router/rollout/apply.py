"""Applies rollout weights to the routing table: a tenant's experiment plan is rebuilt at the
rollout's canary share, and the table reference swapped, so a request reads one consistent plan.

Weights change a few times per rollout, so rebuilding on change (never per request) is free on the
hot path. A reload compiles plans from the file; ``overlay`` puts the rollout's weights back on the
new table before it serves.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from router.assignment import ExperimentPlan
from router.routing import RouterState, RoutingTable, TenantRoute
from tenancy.models import Experiment


def plan_at(tenant: str, experiment: Experiment, canary_weight: float) -> ExperimentPlan:
    """The canary experiment with its canary at ``canary_weight`` percent of units (0: rolled
    back), whatever the file's weights say (sticky rule 3 at that share)."""
    return ExperimentPlan(tenant, experiment, canary_share=canary_weight / 100)


class RouteWeights:
    """The rollout weights in effect on this replica, by tenant."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        self.weights: dict[str, float] = {}

    def __call__(self, tenant: str, canary_weight: float | None) -> None:
        if canary_weight is None:
            self.weights.pop(tenant, None)
        else:
            self.weights[tenant] = canary_weight
        self.state.table = self.overlay(self.state.table, only=tenant)

    def overlay(self, table: RoutingTable, *, only: str | None = None) -> RoutingTable:
        """``table`` with each rollout's weight applied (``only``: just that tenant's)."""
        routes = dict(table.routes)
        for tenant, route in table.routes.items():
            if only is not None and tenant != only:
                continue
            if route.plan is not None and route.plan.kind == "canary":
                routes[tenant] = self._route(route)
        return replace(table, routes=MappingProxyType(routes))

    def _route(self, route: TenantRoute) -> TenantRoute:
        experiment = route.config.experiment
        assert experiment is not None
        weight = self.weights.get(route.tenant_id)
        if weight is None:
            return replace(route, plan=ExperimentPlan(route.tenant_id, experiment))
        return replace(route, plan=plan_at(route.tenant_id, experiment, weight))
