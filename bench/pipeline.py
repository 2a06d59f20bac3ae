"""In-process micro-benchmark of processing (issue 5): what each built-in step costs on a small
record, and what a three-step pipeline, model selection and shadowing add to a request.

``python -m bench.pipeline`` prints both tables; ``measure()`` returns them for ``python -m bench``, and
``e2e_tenants()`` gives the tenants with which ``python -m bench`` can measure the same over HTTP.

Per step: ``step.apply`` on a payload parsed fresh for every call (steps may mutate it), minus the
cost of that parse. Per request: ``RouteProcessing.handle`` with the real service, pipelines and
shadow runner over a backend that answers at once, minus the same call on the fast path
(``InvocationService.invoke``, no processing) — so the "added" column is the router's own work,
parse and serialise included. Every iteration yields to the loop once, so shadow copies really run.
Medians of ``repeats`` runs; targets: ≤ 50 µs per built-in step.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from pydantic import TypeAdapter

from router.assignment import Assigner, Assignment
from router.backends.base import Backend, UpstreamRequest, UpstreamResponse
from router.limits import LimitSpec, TenantLimiter
from router.metrics import RouterMetrics
from router.processing.flow import RouteProcessing, compile_processing
from router.processing.payload import Encoded, Payload
from router.processing.pipeline import build_step
from router.processing.runtime import ProcessingRuntime
from router.routing import TenantRoute
from router.service import Call, InvocationService
from tenancy.models import Tenant
from tenancy.processing import Step

STEP_TARGET_US = 50.0
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
RECORD_BODY = orjson.dumps([RECORD])
V2_REQUEST = orjson.dumps(
    {
        "inputs": [
            {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
        ]
    }
)
V2_ANSWER = orjson.dumps(
    {
        "model_name": "iris-lr",
        "model_version": "v1",
        "id": "0e5d7d2e-3c6b-4d55-9d3f-0a8f0f7c9e11",
        "parameters": {},
        "outputs": [
            {"name": "predict", "shape": [1, 1], "datatype": "INT64",
             "parameters": {"content_type": "np"}, "data": [0]}
        ],
    }
)  # fmt: skip
LABELS = ["setosa", "versicolor", "virginica"]

# (name, step config, payload bytes parsed per call, or an Encoded payload used as it is)
STEP_CASES: list[tuple[str, dict[str, Any], bytes | Encoded]] = [
    ("records_to_v2", {"step": "records_to_v2", "features": FEATURES}, RECORD_BODY),
    ("records_to_csv", {"step": "records_to_csv", "features": FEATURES}, RECORD_BODY),
    ("csv_to_json", {"step": "csv_to_json"}, Encoded(b"0.25,0.5,0.25\n", "text/csv")),
    ("v2_to_json", {"step": "v2_to_json"}, V2_ANSWER),
    ("v2_to_json records", {"step": "v2_to_json", "format": "records"}, V2_ANSWER),
    ("select", {"step": "select", "fields": FEATURES[:3]}, RECORD_BODY),
    ("rename", {"step": "rename", "fields": {"sepal_length": "sl", "petal_length": "pl"}},
     RECORD_BODY),
    ("defaults", {"step": "defaults", "values": {"petal_width": 0.2, "extra": 1}}, RECORD_BODY),
    ("inject", {"step": "inject", "values": {"tier": "gold", "region": "eu"}}, RECORD_BODY),
    ("label_map", {"step": "label_map", "labels": LABELS}, b"[2]"),
    ("top_k", {"step": "top_k", "k": 2, "labels": LABELS}, b"[[0.1, 0.7, 0.2]]"),
    ("threshold", {"step": "threshold", "threshold": 0.5, "above": "yes", "below": "no"},
     b"[0.7]"),
    ("round", {"step": "round", "digits": 2}, b"[0.123456, 1.98765]"),
]  # fmt: skip

THREE_STEPS = {
    "preprocess": [{"step": "records_to_v2", "features": FEATURES}],
    "postprocess": [{"step": "v2_to_json"}, {"step": "label_map", "labels": LABELS}],
}
REQUEST_CASES: list[tuple[str, dict[str, Any], bytes]] = [
    ("three steps: records_to_v2 → model → v2_to_json, label_map", THREE_STEPS, RECORD_BODY),
    ("shadow 10 %", {"shadow": {"model": "shadow", "percent": 10}}, V2_REQUEST),
    ("shadow 100 %", {"shadow": {"model": "shadow", "percent": 100}}, V2_REQUEST),
    (
        "select_model (parse, no steps)",
        {"select_model": {"field": "parameters.kind", "models": {"a": "m"}, "default": "m"}},
        V2_REQUEST,
    ),
    ("fallback configured, primary fine", {"fallback": {"model": "backup"}}, V2_REQUEST),
]


# For the end-to-end benchmark (``python -m bench``): two tenants to add to its generated config,
# measured like its plain tenant. Send E2E_PIPELINE_BODY to the pipeline tenant (a JSON record) and
# the usual V2 body to the shadow tenant; the bench upstream answers any model in V2 form.
PIPELINE_TENANT = "bench-pipeline"
SHADOW_TENANT = "bench-shadow10"
E2E_PIPELINE_BODY = RECORD_BODY


def e2e_tenants(endpoint: str, model: str, limits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Tenant files (as data) for a three-step pipeline and for shadowing 10 % to another model."""
    base = {"endpoint": endpoint, "model": model, "limits": limits}
    return {
        PIPELINE_TENANT: {**base, **THREE_STEPS},
        SHADOW_TENANT: {**base, "shadow": {"model": f"{model}-shadow", "percent": 10}},
    }


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    microseconds: float  # median per call
    added_us: float | None = None  # over the fast path (request rows)

    @property
    def within_target(self) -> bool:
        return self.microseconds <= STEP_TARGET_US


@dataclass(frozen=True, slots=True)
class PipelineReport:
    steps: list[Row]
    requests: list[Row]
    fast_path_us: float

    def markdown(self) -> str:
        lines = [
            "| built-in step (small record) | µs per call | ≤ 50 µs |",
            "|---|---:|:---:|",
            *(
                f"| {r.name} | {r.microseconds:.2f} | {'yes' if r.within_target else 'NO'} |"
                for r in self.steps
            ),
            "",
            f"| per request (fast path: {self.fast_path_us:.1f} µs in-process) | µs | added µs |",
            "|---|---:|---:|",
            *(
                f"| {r.name} | {r.microseconds:.1f} | {r.added_us or 0.0:.1f} |"
                for r in self.requests
            ),
        ]
        return "\n".join(lines)


class InstantBackend(Backend):
    """Answers every model at once with a fixed V2 answer (the network is not what is measured)."""

    name = "bench"
    kind = "v2"
    attempt_timeout_s = 2.0

    async def invoke(self, request: UpstreamRequest) -> UpstreamResponse:
        return UpstreamResponse(V2_ANSWER, "application/json")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


def _median_us(samples_ns: list[int], iterations: int) -> float:
    return statistics.median(samples_ns) / iterations / 1000


def _time_step(
    config: dict[str, Any], payload: bytes | Encoded, iterations: int, repeats: int
) -> float:
    step = build_step(TypeAdapter(Step).validate_python(config))
    loads = orjson.loads
    with_step, parse_only = [], []
    for _ in range(repeats):
        if isinstance(payload, Encoded):
            encoded: Payload = payload
            started = time.perf_counter_ns()
            for _ in range(iterations):
                step.apply(encoded)
            with_step.append(time.perf_counter_ns() - started)
            parse_only.append(0)
            continue
        started = time.perf_counter_ns()
        for _ in range(iterations):
            step.apply(loads(payload))
        with_step.append(time.perf_counter_ns() - started)
        started = time.perf_counter_ns()
        for _ in range(iterations):
            loads(payload)
        parse_only.append(time.perf_counter_ns() - started)
    return max(_median_us(with_step, iterations) - _median_us(parse_only, iterations), 0.0)


def _route(tenant_id: str, tenant: Tenant, processing: RouteProcessing | None) -> TenantRoute:
    return TenantRoute(
        tenant_id=tenant_id,
        config=tenant,
        backend=InstantBackend(),
        limiter=TenantLimiter(LimitSpec(None, None, None)),
        deadline_s=5.0,
        max_body_bytes=1 << 20,
        api_keys=(),
        plan=None,
        processing=processing,
    )


async def _time_requests(iterations: int, repeats: int) -> tuple[float, list[Row]]:
    metrics = RouterMetrics()
    runtime = ProcessingRuntime(metrics)
    shadows = runtime.shadows
    service = InvocationService(metrics, cast(Assigner, None))  # assign() is not measured
    loop = asyncio.get_running_loop()
    assignment = Assignment("default", "m", "default")

    async def timed(handle: Callable[[Call], Awaitable[None]], body: bytes) -> float:
        call = Call(body=body, content_type="application/json", request_id="bench-request-id")
        samples = []
        for _ in range(repeats):
            started = time.perf_counter_ns()
            for _ in range(iterations):
                await handle(call)
                await asyncio.sleep(0)
            samples.append(time.perf_counter_ns() - started)
        return _median_us(samples, iterations)

    plain = _route("plain", Tenant(endpoint="bench", model="m"), None)

    async def fast_path(call: Call) -> None:
        await service.invoke(plain, assignment, call, deadline=loop.time() + 5)

    fast_us = await timed(fast_path, V2_REQUEST)
    rows = []
    for name, fields, body in REQUEST_CASES:
        tenant = Tenant.model_validate({"endpoint": "bench", "model": "m", **fields})
        processing = compile_processing(name, tenant, runtime)
        assert processing is not None
        route = _route(name, tenant, processing)

        async def processed(call: Call, processing: RouteProcessing = processing,
                            route: TenantRoute = route) -> None:  # fmt: skip
            answer = await processing.handle(
                service, route, assignment, call, deadline=loop.time() + 5
            )
            if answer.shadow is not None:
                shadows.submit(answer.shadow)

        us = await timed(processed, body)
        rows.append(Row(name, us, us - fast_us))
    await runtime.aclose()
    return fast_us, rows


def measure(*, iterations: int = 20_000, repeats: int = 5) -> PipelineReport:
    steps = [
        Row(name, _time_step(config, payload, iterations, repeats))
        for name, config, payload in STEP_CASES
    ]
    fast_us, requests = asyncio.run(_time_requests(iterations // 4, repeats))
    return PipelineReport(steps, requests, fast_us)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    report = measure(iterations=args.iterations, repeats=args.repeats)
    print(report.markdown())
    return 0 if all(r.within_target for r in report.steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
