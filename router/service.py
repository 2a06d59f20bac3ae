"""The transport-agnostic routing service: variant choice and the upstream call under a deadline."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from router.assignment import DEFAULT_VARIANT, Assigner, Assignment
from router.backends.base import UpstreamRequest, UpstreamResponse
from router.errors import UpstreamTimeout
from router.metrics import RouterMetrics
from router.routing import TenantRoute


@dataclass(frozen=True, slots=True)
class Call:
    """What the caller sent, minus transport details."""

    body: bytes
    content_type: str
    request_id: str
    accept: str | None = None
    custom_attributes: str | None = None


class InvocationService:
    def __init__(self, metrics: RouterMetrics, assigner: Assigner) -> None:
        self.metrics = metrics
        self.assigner = assigner

    async def assign(self, route: TenantRoute, unit_id: str | None) -> Assignment:
        if route.plan is None:
            return Assignment(DEFAULT_VARIANT, route.config.model, "default")
        return await self.assigner.assign(route.plan, unit_id)

    async def invoke(
        self, route: TenantRoute, assignment: Assignment, call: Call, *, deadline: float
    ) -> UpstreamResponse:
        """Call the model; ``deadline`` is a loop-clock time bounding the whole request."""
        request = UpstreamRequest(
            model=assignment.model,
            body=call.body,
            content_type=call.content_type,
            request_id=call.request_id,
            accept=call.accept,
            custom_attributes=call.custom_attributes,
        )
        backend = route.backend
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                response = await backend.invoke(request)
        except UpstreamTimeout:
            raise
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no answer from {backend.name!r} within the tenant's "
                f"{route.deadline_s * 1000:g} ms timeout"
            ) from exc
        finally:
            self.metrics.upstream_duration.labels(backend.name).observe(
                time.perf_counter() - started
            )
        if response.cold_start:
            self.metrics.cold_starts.labels(route.tenant_id, assignment.model).inc()
        return response
