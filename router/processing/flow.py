"""A tenant's processing, compiled once per config snapshot: which steps, which model(s), and what
happens after. Tenants without any of it get no ``RouteProcessing`` at all, so their requests stay on
the byte-forwarding fast path (no JSON parsing, nothing allocated here).

Per request (``handle``): pick the stages (a variant's own steps replace the tenant's), choose the
model from the input when ``select_model`` is set (the only time the body is parsed before the
steps), run preprocess, call the model (or the ensemble; the fallback model when the primary fails),
run postprocess, and hand back a shadow job for the view to submit once the caller has its answer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from router.assignment import Assignment
from router.backends.base import UpstreamRequest, UpstreamResponse
from router.errors import InvalidRequest, RouterError
from router.processing.custom import RequestInfo
from router.processing.ensemble import ENSEMBLE_VARIANT, EnsembleCall
from router.processing.interface import Json
from router.processing.pipeline import Pipeline
from router.processing.runtime import ProcessingRuntime
from router.processing.selection import ModelSelector
from router.processing.shadow import ShadowJob, ShadowPlan
from tenancy.models import Tenant
from tenancy.processing import Fallback, StepConfig

if TYPE_CHECKING:
    from router.routing import TenantRoute
    from router.service import Call, InvocationService

log = logging.getLogger(__name__)

FALLBACK_VARIANT = "fallback"


@dataclass(frozen=True, slots=True)
class Stages:
    pre: Pipeline
    post: Pipeline


@dataclass(frozen=True, slots=True)
class Answer:
    body: bytes
    content_type: str
    assignment: Assignment  # what answered: X-Variant and X-Model-Id
    shadow: ShadowJob | None = None  # submit once the response is sent


def needs_processing(tenant: Tenant) -> bool:
    variants = tenant.experiment.variants if tenant.experiment is not None else ()
    return bool(
        tenant.preprocess
        or tenant.postprocess
        or tenant.shadow
        or tenant.fallback
        or tenant.ensemble
        or tenant.select_model
        or any(v.preprocess or v.postprocess for v in variants)
    )


class RouteProcessing:
    def __init__(self, tenant_id: str, tenant: Tenant, runtime: ProcessingRuntime) -> None:
        self.tenant_id = tenant_id
        self.metrics = metrics = runtime.metrics
        self.shadows = runtime.shadows
        threads = runtime.step_threads

        def stages(pre: Sequence[StepConfig], post: Sequence[StepConfig]) -> Stages:
            return Stages(
                Pipeline(tenant_id, "preprocess", pre, metrics, threads=threads),
                Pipeline(tenant_id, "postprocess", post, metrics, threads=threads),
            )

        self.default = stages(tenant.preprocess, tenant.postprocess)
        self.by_variant: dict[str, Stages] = {}
        for variant in tenant.experiment.variants if tenant.experiment is not None else ():
            if variant.preprocess is not None or variant.postprocess is not None:
                self.by_variant[variant.name] = stages(
                    tenant.preprocess if variant.preprocess is None else variant.preprocess,
                    tenant.postprocess if variant.postprocess is None else variant.postprocess,
                )
        self.selector = ModelSelector(tenant.select_model) if tenant.select_model else None
        self.ensemble = (
            EnsembleCall(tenant_id, tenant.ensemble, metrics) if tenant.ensemble else None
        )
        self.fallback: Fallback | None = tenant.fallback
        self.reserve_s = tenant.fallback.reserve_ms / 1000 if tenant.fallback else 0.0
        self.shadow = (
            ShadowPlan(tenant_id, tenant.shadow, default_timeout_s=tenant.limits.timeout_ms / 1000)
            if tenant.shadow
            else None
        )

    async def handle(
        self,
        service: InvocationService,
        route: TenantRoute,
        assignment: Assignment,
        call: Call,
        *,
        deadline: float,
    ) -> Answer:
        stages = self.by_variant.get(assignment.variant, self.default)
        parsed: Json | None = None
        if self.selector is not None:
            try:
                parsed = orjson.loads(call.body)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"select_model needs a JSON body: {exc}") from None
            model = self.selector.choose(parsed)
            self.metrics.model_selections.labels(self.tenant_id, model).inc()
            assignment = Assignment(assignment.variant, model, "selected")
        elif self.ensemble is not None:
            assignment = Assignment(ENSEMBLE_VARIANT, self.ensemble.label, "ensemble")
        request = RequestInfo(self.tenant_id, assignment.model, assignment.variant, call.request_id)
        sent = await stages.pre.run(
            call.body, call.content_type, request, deadline=deadline, parsed=parsed
        )
        if sent.body is not call.body:
            call = dataclasses.replace(call, body=sent.body, content_type=sent.content_type)

        if self.ensemble is not None:
            response, models = await self.ensemble.invoke(service, route, call, deadline=deadline)
            answered = Assignment(ENSEMBLE_VARIANT, models, "ensemble")
        else:
            response, answered = await self._call(service, route, assignment, call, deadline)
        if answered is not assignment:
            request = dataclasses.replace(request, model=answered.model, variant=answered.variant)
        out = await stages.post.run(
            response.body, response.content_type, request, deadline=deadline
        )

        shadow = None
        if self.shadow is not None and self.shadow.sample():
            copy = UpstreamRequest(
                model=self.shadow.model,
                body=call.body,
                content_type=call.content_type,
                request_id=f"{call.request_id}-shadow",
                accept=call.accept,
                custom_attributes=call.custom_attributes,
                tenant=route.tenant_id,
            )
            shadow = ShadowJob(self.shadow, route.backend, copy, response.body)
        return Answer(out.body, out.content_type, answered, shadow)

    async def _call(
        self,
        service: InvocationService,
        route: TenantRoute,
        assignment: Assignment,
        call: Call,
        deadline: float,
    ) -> tuple[UpstreamResponse, Assignment]:
        fallback = self.fallback
        if fallback is None:
            return await service.invoke(route, assignment, call, deadline=deadline), assignment
        try:
            primary = await service.invoke(
                route, assignment, call, deadline=deadline - self.reserve_s
            )
        except RouterError as exc:
            if exc.code not in fallback.on:
                raise
            first = exc
        else:
            return primary, assignment
        self.metrics.fallbacks.labels(self.tenant_id, fallback.model, first.code).inc()
        log.debug(
            "fallback tenant=%s model=%s after %s: %s",
            self.tenant_id,
            fallback.model,
            first.code,
            first.message,
        )
        backup = Assignment(FALLBACK_VARIANT, fallback.model, "fallback")
        try:
            return await service.invoke(route, backup, call, deadline=deadline), backup
        except RouterError as exc:
            raise type(exc)(
                f"{exc.message} (the fallback, after {assignment.model!r} failed: {first.message})",
                retry_after=exc.retry_after,
            ) from exc


def compile_processing(
    tenant_id: str, tenant: Tenant, runtime: ProcessingRuntime
) -> RouteProcessing | None:
    """None for a tenant that needs none of it (the fast path)."""
    if not needs_processing(tenant):
        return None
    return RouteProcessing(tenant_id, tenant, runtime)
