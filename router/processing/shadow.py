"""Shadow traffic: a copy of a sampled request goes to a shadow model after the caller has its answer.

The view sends the response first, then submits the job (``ShadowRunner.submit``), so a shadow can
neither delay nor fail the caller. Copies are bounded per tenant (``shadow.max_in_flight``) and for
the whole process; when full, the copy is dropped and counted, so a slow shadow model cannot pile up
tasks. Running copies are tasks the runner keeps, cancelled and awaited by ``aclose()`` at shutdown.

Metrics, per tenant: ``router_shadow_requests_total{result}`` (ok, error, timeout, dropped),
``router_shadow_duration_seconds``, ``router_shadow_agreement_total{result}`` (agree, disagree, error)
and ``router_shadow_in_flight``.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from router.backends.base import Backend, UpstreamRequest
from router.errors import RouterError, UpstreamTimeout
from router.loops import cancel_and_wait
from router.metrics import RouterMetrics
from router.processing.interface import Json
from tenancy.processing import Shadow, resolve_callable

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 1024  # for the whole process, over every tenant


# --- agreement ----------------------------------------------------------------------------------


def parsed(body: bytes) -> Json:
    try:
        value: Json = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()
    return value


def outputs_of(body: bytes) -> Json:
    """What is compared: a V2 answer's outputs as {name: data} (the model name differs by design),
    otherwise the whole parsed answer (or its text)."""
    value = parsed(body)
    outputs = value.get("outputs") if isinstance(value, dict) else None
    if isinstance(outputs, list):
        return {str(o.get("name")): o.get("data") for o in outputs if isinstance(o, dict)}
    return value


def _close(a: Json, b: Json, tolerance: float) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, bool) or isinstance(b, bool):
            return a is b
        return math.isclose(a, b, rel_tol=0.0, abs_tol=tolerance)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tolerance) for k in a)
    return a == b


class Agreement(abc.ABC):
    @abc.abstractmethod
    async def agree(self, primary: bytes, shadow: bytes) -> bool:
        """Do the two raw answers agree?"""


class Exact(Agreement):
    async def agree(self, primary: bytes, shadow: bytes) -> bool:
        return outputs_of(primary) == outputs_of(shadow)


class Tolerance(Agreement):
    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance

    async def agree(self, primary: bytes, shadow: bytes) -> bool:
        return _close(outputs_of(primary), outputs_of(shadow), self.tolerance)


class CustomComparison(Agreement):
    """``module:function`` given both parsed answers, plain or async."""

    def __init__(self, ref: str) -> None:
        self.function: Callable[..., object] = resolve_callable(ref)

    async def agree(self, primary: bytes, shadow: bytes) -> bool:
        result = self.function(parsed(primary), parsed(shadow))
        if inspect.isawaitable(result):
            result = await result
        return bool(result)


def agreement_for(config: Shadow) -> Agreement:
    if config.comparator is not None:
        return CustomComparison(config.comparator)
    if config.tolerance is not None:
        return Tolerance(config.tolerance)
    return Exact()


# --- plan and runner ----------------------------------------------------------------------------


class ShadowPlan:
    """A tenant's shadow config, compiled once per snapshot; ``sample()`` runs per request."""

    def __init__(
        self,
        tenant_id: str,
        config: Shadow,
        *,
        default_timeout_s: float,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.tenant_id = tenant_id
        self.model = config.model
        self.fraction = config.percent / 100
        self.max_in_flight = config.max_in_flight
        self.timeout_s = (
            config.timeout_ms / 1000 if config.timeout_ms is not None else default_timeout_s
        )
        self.agreement = agreement_for(config)
        self._rng = rng

    def sample(self) -> bool:
        return self.fraction >= 1.0 or self._rng() < self.fraction


@dataclass(frozen=True, slots=True)
class ShadowJob:
    plan: ShadowPlan
    backend: Backend
    request: UpstreamRequest  # the primary's upstream request, for the shadow model
    primary: bytes  # the primary's raw answer


class ShadowRunner:
    """Runs shadow copies in the background, bounded; one per process (owned by BackendFactory)."""

    def __init__(self, metrics: RouterMetrics, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT):
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_tenant: dict[str, int] = {}
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, job: ShadowJob) -> bool:
        """Start the copy now, or drop it (counted) when the runner is full or closed."""
        tenant = job.plan.tenant_id
        running = self._per_tenant.get(tenant, 0)
        if (
            self._closed
            or running >= job.plan.max_in_flight
            or len(self._tasks) >= self.max_in_flight
        ):
            self.metrics.shadow_requests.labels(tenant, "dropped").inc()
            return False
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"shadow {tenant}")
        self._tasks.add(task)
        self._per_tenant[tenant] = running + 1
        self.metrics.shadow_in_flight.labels(tenant).inc()
        task.add_done_callback(lambda done: self._finished(done, tenant))
        return True

    def _finished(self, task: asyncio.Task[None], tenant: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("shadow copy crashed tenant=%s", tenant, exc_info=error)
        left = self._per_tenant.get(tenant, 1) - 1
        if left > 0:
            self._per_tenant[tenant] = left
        else:
            self._per_tenant.pop(tenant, None)
        self.metrics.shadow_in_flight.labels(tenant).dec()

    async def _run(self, job: ShadowJob) -> None:
        plan, metrics = job.plan, self.metrics
        tenant = plan.tenant_id
        started = time.perf_counter()
        try:
            async with asyncio.timeout(plan.timeout_s):
                response = await job.backend.invoke(job.request)
        except (UpstreamTimeout, TimeoutError):
            outcome = "timeout"
        except RouterError as exc:
            outcome = "error"
            log.debug("shadow failed tenant=%s model=%s: %s", tenant, plan.model, exc.message)
        else:
            outcome = "ok"
        metrics.shadow_duration.labels(tenant).observe(time.perf_counter() - started)
        metrics.shadow_requests.labels(tenant, outcome).inc()
        if outcome != "ok":
            return
        try:
            agreed = (
                "agree" if await plan.agreement.agree(job.primary, response.body) else "disagree"
            )
        except Exception:  # a custom comparator's bug is counted, never raised into the loop
            log.warning("shadow comparator failed tenant=%s", tenant, exc_info=True)
            agreed = "error"
        metrics.shadow_agreement.labels(tenant, agreed).inc()

    async def aclose(self) -> None:
        """Stop taking copies, cancel the running ones and wait for them to end."""
        self._closed = True
        await cancel_and_wait(list(self._tasks))
