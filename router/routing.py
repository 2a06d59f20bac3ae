"""The routing table: a Snapshot compiled for the hot path, rebuilt whole on every reload.

A request reads ``RouterState.table`` once and keeps that table to the end, so a reload never changes
the route of a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import aiohttp

from router.assignment import ExperimentPlan
from router.backends.base import Backend
from router.backends.sagemaker import SageMakerBackend, SageMakerClients
from router.backends.v2 import InstancePicker, V2Backend, V2Instance
from router.backends.v2_placement import PlacementPicker
from router.global_rate import GlobalRates
from router.limits import LimitSpec, RateGate, TenantLimiter
from router.metrics import RouterMetrics
from router.processing.flow import RouteProcessing, compile_processing
from router.processing.runtime import ProcessingRuntime
from router.sigv4_verify import resolve_secrets
from router.traffic import TrafficCounter
from router.upstream_log import FailureLog
from router.warm_map import WarmMap
from tenancy.models import Endpoint, SageMakerEndpoint, Tenant, V2Endpoint
from tenancy.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TenantRoute:
    tenant_id: str
    config: Tenant
    backend: Backend
    limiter: TenantLimiter
    deadline_s: float
    max_body_bytes: int
    api_keys: tuple[str, ...]
    plan: ExperimentPlan | None
    processing: RouteProcessing | None = None  # None: bytes forwarded as they are (fast path)
    # SageMaker front: access key id -> secret (SigV4), read from the environment or files.
    aws_secrets: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    snapshot: Snapshot
    routes: Mapping[str, TenantRoute]
    backends: Mapping[str, Backend]


class BackendFactory:
    """Builds backends from endpoint config, reusing one where the config did not change."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        sagemaker: SageMakerClients,
        metrics: RouterMetrics,
        *,
        warm_map: WarmMap | None = None,
        traffic: TrafficCounter | None = None,
    ) -> None:
        self.session = session
        self.sagemaker = sagemaker
        self.metrics = metrics
        self.warm_map = warm_map
        self.traffic = traffic
        self._built: dict[str, tuple[Endpoint, Backend]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # One rate-limited failure log for every endpoint: its limit is per instance and kind.
        self.failure_log = FailureLog()
        # Shadow copies are background calls to these backends: stopped before the backends close.
        self.processing = ProcessingRuntime(metrics)

    def backend(self, name: str, endpoint: Endpoint) -> Backend:
        known = self._built.get(name)
        if known is not None and known[0] == endpoint:
            return known[1]
        built = self._build(name, endpoint)
        if self.traffic is not None:
            traffic = self.traffic
            built.on_request = lambda model: traffic.count(name, model)
        built.start()
        if known is not None:
            self._retire(known[1])
        self._built[name] = (endpoint, built)
        return built

    def _build(self, name: str, endpoint: Endpoint) -> Backend:
        timeout_s = endpoint.timeout_ms / 1000
        if isinstance(endpoint, V2Endpoint):
            timeout = aiohttp.ClientTimeout(total=timeout_s)

            def make(url: str) -> V2Instance:
                return V2Instance(url, self.session, timeout=timeout)

            warm_map = self.warm_map
            loads, ondemand = self.metrics.model_loads, self.metrics.ondemand_loads
            retries = self.metrics.upstream_retries
            ondemand.labels(name)

            def loaded(_instance: str, model: str) -> None:
                loads.labels(name, model).inc()
                ondemand.labels(name).inc()

            picker: InstancePicker = InstancePicker()
            make_room = None
            if warm_map is not None:
                capacity = endpoint.capacity.max_models
                placement = PlacementPicker(
                    endpoint=name,
                    warm=lambda model: warm_map.instances_for(name, model),
                    holding=lambda url: warm_map.holding(name, url),
                    capacity=lambda: capacity,
                )
                picker, make_room = placement, placement.make_room
            return V2Backend(
                name,
                [make(url) for url in endpoint.instances],
                attempt_timeout_s=timeout_s,
                picker=picker,
                on_load=loaded,
                discovery=endpoint.discovery,
                make_instance=make,
                failure_log=self.failure_log,
                on_retry=lambda reason: retries.labels(name, reason).inc(),
                make_room=make_room,
            )
        assert isinstance(endpoint, SageMakerEndpoint)
        return SageMakerBackend(
            name,
            endpoint_name=endpoint.endpoint_name or "",
            endpoint_names=endpoint.endpoint_names,
            region=endpoint.region,
            endpoint_url=endpoint.endpoint_url,
            control_endpoint_url=endpoint.control_endpoint_url,
            clients=self.sagemaker,
            attempt_timeout_s=timeout_s,
        )

    def _retire(self, backend: Backend) -> None:
        # In-flight requests keep their reference; only background work stops.
        task = asyncio.create_task(backend.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def prune(self, keep: set[str]) -> None:
        """Retire backends whose endpoint is gone."""
        for name in [n for n in self._built if n not in keep]:
            self._retire(self._built.pop(name)[1])

    async def refresh_discovered(self) -> None:
        """Resolve discovered endpoints once, so the first request has instances."""
        for _, backend in self._built.values():
            if isinstance(backend, V2Backend) and backend.discovery is not None:
                try:
                    await backend.refresh_instances()
                except OSError as exc:
                    log.warning("endpoint=%s discovery failed: %s", backend.name, exc)

    async def aclose(self) -> None:
        await self.processing.aclose()
        for _, backend in self._built.values():
            await backend.aclose()
        self._built.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class LimiterRegistry:
    """Limiters outlive reloads, so a config edit does not reset a tenant's in-flight count."""

    def __init__(self, rates: GlobalRates | None = None) -> None:
        self._limiters: dict[str, TenantLimiter] = {}
        self._rates = rates  # None: each replica limits on its own (no Redis)

    def get(self, tenant_id: str, tenant: Tenant) -> TenantLimiter:
        limits = tenant.limits
        spec = LimitSpec(limits.max_concurrency, limits.rps, limits.burst)
        limiter = self._limiters.get(tenant_id)
        if limiter is None:
            rates = self._rates
            factory = None
            if rates is not None:

                def factory(rps: float, burst: float) -> RateGate:
                    return rates.bucket(tenant_id, rps, burst)

            limiter = self._limiters[tenant_id] = TenantLimiter(spec, rate_factory=factory)
        else:
            limiter.update(spec)
        return limiter

    def prune(self, keep: Mapping[str, object]) -> None:
        for tenant_id in [t for t in self._limiters if t not in keep]:
            del self._limiters[tenant_id]


def compile_table(
    snapshot: Snapshot, backends: BackendFactory, limiters: LimiterRegistry
) -> RoutingTable:
    built = {name: backends.backend(name, ep) for name, ep in snapshot.endpoints.items()}
    routes: dict[str, TenantRoute] = {}
    for tenant_id, tenant in snapshot.tenants.items():
        # The tenant's timeout bounds the whole request; the endpoint's bounds each attempt.
        routes[tenant_id] = TenantRoute(
            tenant_id=tenant_id,
            config=tenant,
            backend=built[tenant.endpoint],
            limiter=limiters.get(tenant_id, tenant),
            deadline_s=tenant.limits.timeout_ms / 1000,
            max_body_bytes=tenant.limits.max_body_bytes,
            api_keys=tenant.auth.api_key_sha256,
            plan=ExperimentPlan(tenant_id, tenant.experiment) if tenant.experiment else None,
            processing=compile_processing(tenant_id, tenant, backends.processing),
            aws_secrets=resolve_secrets(tenant_id, tenant.auth.aws_access_keys),
        )
    limiters.prune(routes)
    return RoutingTable(snapshot, MappingProxyType(routes), MappingProxyType(built))


class RouterState:
    """The one mutable reference a reload swaps."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.warm_seen: set[str] = set()  # endpoints the preloader has reported warm once
        self.was_ready = False  # /readyz answered 200 once: it stays ready (SPEC /readyz)
