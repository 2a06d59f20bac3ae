"""Scatter-gather: call every member model in parallel, then aggregate what came back.

The partial-failure policy is ``min_success`` (default: every member must answer). Members are
awaited until the policy is met or can no longer be met; ``first_success`` answers with the first
member that succeeds and cancels the rest.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from router.assignment import Assignment
from router.backends.base import UpstreamResponse
from router.errors import InvalidRequest, RouterError, UpstreamError, UpstreamTimeout
from router.loops import cancel_and_wait
from router.metrics import RouterMetrics
from router.processing.interface import AggregateContext, Json, MemberResult
from router.processing.payload import JSON_TYPE, dumps
from tenancy.processing import Ensemble, resolve_callable
from tenancy.text import plural

if TYPE_CHECKING:
    from router.routing import TenantRoute
    from router.service import Call, InvocationService

log = logging.getLogger(__name__)

ENSEMBLE_VARIANT = "ensemble"


class AggregationFailed(Exception):
    """The answers cannot be aggregated (shapes differ, not numbers, ...)."""


# --- where the numbers are in an answer ---------------------------------------------------------


class Tensor:
    """The aggregatable values of one answer, and how to put aggregated values back in its form."""

    def __init__(self, answer: Json, output: str | None) -> None:
        self.answer = answer
        self.meta: dict[str, Json] | None = None  # the V2 output the values came from
        self.data: list[Json]
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        predictions = answer.get("predictions") if isinstance(answer, dict) else None
        if isinstance(outputs, list):
            for candidate in outputs:
                if isinstance(candidate, dict) and output in (None, candidate.get("name")):
                    data = candidate.get("data")
                    if isinstance(data, list):
                        self.meta, self.data = candidate, data
                        return
            raise AggregationFailed(f"no output {output or 'at all'} with data")
        if isinstance(predictions, list):
            self.data = predictions
        elif isinstance(answer, list):
            self.data = answer
        else:
            self.data = [answer]

    def rebuild(self, data: list[Json], *, datatype: str | None = None) -> Json:
        if self.meta is not None:
            output = {k: v for k, v in self.meta.items() if k != "parameters"}
            output["data"] = data
            if datatype is not None:
                output["datatype"] = datatype
            return {"model_name": ENSEMBLE_VARIANT, "outputs": [output]}
        if isinstance(self.answer, dict):
            return {"predictions": data}
        if isinstance(self.answer, list):
            return data
        return data[0]


def _hashable(value: Json) -> object:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return value


def _same_length(tensors: list[Tensor]) -> int:
    length = len(tensors[0].data)
    if any(len(t.data) != length for t in tensors):
        raise AggregationFailed("the models' answers have different lengths")
    return length


# --- aggregators --------------------------------------------------------------------------------


class Aggregation(abc.ABC):
    @abc.abstractmethod
    async def combine(
        self, results: list[MemberResult], context: AggregateContext, *, deadline: float
    ) -> Json:
        """The ensemble's answer from the members' parsed answers (in the ensemble's order)."""


class Vote(Aggregation):
    """Majority per value; a tie goes to the model listed first."""

    def __init__(self, output: str | None) -> None:
        self.output = output

    async def combine(
        self, results: list[MemberResult], context: AggregateContext, *, deadline: float
    ) -> Json:
        tensors = [Tensor(r.output, self.output) for r in results]
        voted: list[Json] = []
        for i in range(_same_length(tensors)):
            counts: dict[object, int] = {}
            first: dict[object, Json] = {}
            for tensor in tensors:
                value = tensor.data[i]
                key = _hashable(value)
                counts[key] = counts.get(key, 0) + 1
                first.setdefault(key, value)
            voted.append(first[max(counts, key=counts.__getitem__)])  # max keeps the earliest
        return tensors[0].rebuild(voted)


def _mean(values: list[Json]) -> Json:
    rows = [v for v in values if isinstance(v, list)]
    if len(rows) == len(values):
        if len({len(r) for r in rows}) != 1:
            raise AggregationFailed("the models' answers have different shapes")
        return [_mean([r[j] for r in rows]) for j in range(len(rows[0]))]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != len(values):
        raise AggregationFailed("mean needs numbers")
    return sum(numbers) / len(numbers)


class Mean(Aggregation):
    def __init__(self, output: str | None) -> None:
        self.output = output

    async def combine(
        self, results: list[MemberResult], context: AggregateContext, *, deadline: float
    ) -> Json:
        tensors = [Tensor(r.output, self.output) for r in results]
        length = _same_length(tensors)
        averaged = [_mean([t.data[i] for t in tensors]) for i in range(length)]
        return tensors[0].rebuild(averaged, datatype="FP64")


class CustomAggregation(Aggregation):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.function: Callable[..., Any] = resolve_callable(ref)

    async def combine(
        self, results: list[MemberResult], context: AggregateContext, *, deadline: float
    ) -> Json:
        try:
            result = self.function(results, context)
            if inspect.isawaitable(result):
                async with asyncio.timeout_at(deadline):
                    result = await result
        except TimeoutError:
            raise UpstreamTimeout(f"ensemble aggregator {self.ref} ran out of time") from None
        except Exception as exc:  # user code: its failure is this request's 502, never a crash
            log.warning("ensemble aggregator failed function=%s", self.ref, exc_info=True)
            raise AggregationFailed(f"{self.ref} raised {type(exc).__name__}: {exc}") from exc
        combined: Json = result
        return combined


def _aggregation(config: Ensemble) -> Aggregation | None:
    if config.aggregate == "vote":
        return Vote(config.output)
    if config.aggregate == "mean":
        return Mean(config.output)
    if config.aggregate == "custom":
        assert config.function is not None
        return CustomAggregation(config.function)
    return None  # first_success: the first answer as it is


# --- scatter-gather -----------------------------------------------------------------------------


class EnsembleCall:
    def __init__(self, tenant_id: str, config: Ensemble, metrics: RouterMetrics) -> None:
        self.tenant_id = tenant_id
        self.models = config.models
        self.needed = config.needed
        self.aggregation = _aggregation(config)
        self.metrics = metrics
        self.label = ",".join(config.models)

    async def invoke(
        self, service: InvocationService, route: TenantRoute, call: Call, *, deadline: float
    ) -> tuple[UpstreamResponse, str]:
        """The aggregated answer and the models that contributed (X-Model-Id)."""
        tasks = {
            asyncio.create_task(
                service.invoke(route, Assignment(ENSEMBLE_VARIANT, m, "ensemble"), call,
                               deadline=deadline),
                name=f"ensemble {self.tenant_id} {m}",
            ): m
            for m in self.models
        }  # fmt: skip
        answered: dict[str, UpstreamResponse] = {}  # in completion order
        errors: dict[str, RouterError] = {}
        pending = set(tasks)
        allowed_failures = len(self.models) - self.needed
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    model = tasks[task]
                    error = task.exception()
                    if error is None:
                        answered[model] = task.result()
                    elif isinstance(error, RouterError):
                        errors[model] = error
                    else:
                        raise error
                    self._count(model, error)
                if self.aggregation is None and answered:
                    break
                if len(errors) > allowed_failures:
                    break
        finally:
            await cancel_and_wait(pending)
            for task in pending:  # retrieved, so none is reported as never retrieved
                if not task.cancelled():
                    task.exception()
        if len(answered) < self.needed:
            raise self._failure(answered, errors)
        if self.aggregation is None:
            model, response = next(iter(answered.items()))
            return response, model
        return await self._aggregate(answered, call.request_id, deadline), ",".join(
            m for m in self.models if m in answered
        )

    async def _aggregate(
        self, answered: dict[str, UpstreamResponse], request_id: str, deadline: float
    ) -> UpstreamResponse:
        assert self.aggregation is not None
        results = []
        for model in self.models:
            if model in answered:
                try:
                    output: Json = orjson.loads(answered[model].body)
                except orjson.JSONDecodeError:
                    raise UpstreamError(f"ensemble: model {model!r} answered non-JSON") from None
                results.append(MemberResult(model, output))
        context = AggregateContext(self.tenant_id, request_id, self.models)
        try:
            combined = await self.aggregation.combine(results, context, deadline=deadline)
            body = dumps(combined)
        except (AggregationFailed, TypeError) as exc:  # TypeError: orjson cannot encode it
            raise UpstreamError(f"ensemble cannot aggregate the answers: {exc}") from None
        cold = any(r.cold_start for r in answered.values())
        return UpstreamResponse(body, JSON_TYPE, cold_start=cold)

    def _count(self, model: str, error: BaseException | None) -> None:
        result = "ok" if error is None else getattr(error, "code", "error")
        self.metrics.ensemble_members.labels(self.tenant_id, model, result).inc()

    def _failure(
        self, answered: dict[str, UpstreamResponse], errors: dict[str, RouterError]
    ) -> RouterError:
        detail = "; ".join(f"{m}: {e.message}" for m, e in errors.items())
        message = (
            f"ensemble: {len(answered)} of {plural(len(self.models), 'model')} answered, "
            f"{self.needed} needed ({detail})"
        )
        # The most telling class wins: the input was refused, else a timeout, else an error.
        for kind in (InvalidRequest, UpstreamTimeout):
            if any(isinstance(e, kind) for e in errors.values()):
                return kind(message)
        return UpstreamError(message)
