"""Custom steps (``module:function``) on real inference: plain, async and cpu_heavy, their context,
their failures (400 / 502 naming the step) and their timeouts (504).

The step functions the tenants below name live in this module (``tests.test_processing_custom:...``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.processing import Json, StepContext
from tests.router_fixtures import ConfigDir, RouterFactory, error_parts, model_predict, v2_body

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TO_V2 = {"step": "records_to_v2", "features": FEATURES}
HERE = "tests.test_processing_custom"
HEAVY_GATE = threading.Event()


def where_it_ran(payload: Json, context: StepContext) -> Json:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        on_loop = False
    else:
        on_loop = True
    return {"answer": payload, "on_loop": on_loop}


def waits_for_the_gate(payload: Json, context: StepContext) -> Json:
    if not HEAVY_GATE.wait(timeout=10):
        raise RuntimeError("the gate never opened")
    return payload


async def describe_context(payload: Json, context: StepContext) -> Json:
    await asyncio.sleep(0)
    return {
        "answer": payload,
        "tenant": context.tenant,
        "model": context.model,
        "variant": context.variant,
        "request_id": context.request_id,
        "stage": context.stage,
        "index": context.index,
        "options": dict(context.options),
    }


async def sleeps_long(payload: Json, context: StepContext) -> Json:
    await asyncio.sleep(30)
    return payload


def blocks_a_while(payload: Json, context: StepContext) -> Json:
    time.sleep(0.2)
    return payload


def sleeps_in_a_thread(payload: Json, context: StepContext) -> Json:
    time.sleep(0.3)
    return payload


def has_a_bug(payload: Json, context: StepContext) -> Json:
    raise KeyError("oops")


def custom(function: str, **fields: Any) -> dict[str, Any]:
    return {"step": "custom", "function": function, **fields}


async def test_the_example_steps_on_real_inference(
    mme_config: ConfigDir, start_router: RouterFactory, models_dir: Path
) -> None:
    mme_config.tenant(
        "flowers",
        endpoint="mme",
        model="iris-lr",
        preprocess=[
            custom(
                "examples.steps:clip_features",
                timeout_ms=20,
                options={"ranges": {"sepal_length": [4.0, 8.0], "petal_width": [0.1, 2.5]}},
            ),
            TO_V2,
        ],
        postprocess=[
            {"step": "v2_to_json"},
            {"step": "label_map", "labels": ["setosa", "versicolor", "virginica"]},
            custom("examples.steps:with_request_id"),
        ],
    )
    router = await start_router(mme_config)
    sent = [{"sepal_length": 55.0, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 9.0}]
    status, _, body = await router.invoke(
        "flowers", orjson.dumps(sent), headers={"X-Request-Id": "req-7"}
    )
    assert status == 200, body
    clipped = model_predict(models_dir, "iris-lr", [[8.0, 3.1, 5.4, 2.5]])
    assert orjson.loads(body) == {
        "request_id": "req-7",
        "model": "iris-lr",
        "variant": "default",
        "predictions": [["setosa", "versicolor", "virginica"][int(clipped[0])]],
    }


async def test_plain_async_and_cpu_heavy_steps(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    for name, step in [
        ("plain", custom(f"{HERE}:where_it_ran")),
        ("heavy", custom(f"{HERE}:where_it_ran", cpu_heavy=True)),
        ("async", custom(f"{HERE}:describe_context", options={"k": [1, 2]})),
    ]:
        mme_config.tenant(
            name,
            endpoint="mme",
            model="iris-tree",
            postprocess=[{"step": "v2_to_json"}, step],
        )
    router = await start_router(mme_config)
    answers = {}
    for name in ("plain", "heavy", "async"):
        status, _, body = await router.invoke(name, v2_body([[5.1, 3.5, 1.4, 0.2]]))
        assert status == 200, body
        answers[name] = orjson.loads(body)
    assert answers["plain"] == {"answer": [0], "on_loop": True}
    assert answers["heavy"] == {"answer": [0], "on_loop": False}  # a worker thread: no loop there
    context = answers["async"]
    assert {k: context[k] for k in ("tenant", "model", "variant", "stage", "index", "options")} == {
        "tenant": "async",
        "model": "iris-tree",
        "variant": "default",
        "stage": "postprocess",
        "index": 1,
        "options": {"k": [1, 2]},
    }
    assert len(context["request_id"]) >= 16


async def test_a_cpu_heavy_step_leaves_the_loop_free(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    """While the heavy step blocks its thread, another request is served; only then is the gate
    opened. Were the step on the loop, the second request could never finish."""
    mme_config.tenant(
        "heavy",
        endpoint="mme",
        model="iris-tree",
        preprocess=[custom(f"{HERE}:waits_for_the_gate", cpu_heavy=True, timeout_ms=10_000)],
    )
    mme_config.tenant("plain", endpoint="mme", model="iris-tree")
    router = await start_router(mme_config)
    HEAVY_GATE.clear()
    heavy = asyncio.create_task(router.invoke("heavy", v2_body([[5.1, 3.5, 1.4, 0.2]])))
    try:
        status, _, body = await router.invoke("plain")
        assert status == 200, body
        assert not heavy.done()
    finally:
        HEAVY_GATE.set()
    status, _, body = await heavy
    assert status == 200, body


async def test_custom_step_failures_name_the_step(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    mme_config.tenant(
        "clipped",
        endpoint="mme",
        model="iris-lr",
        preprocess=[
            custom("examples.steps:clip_features", options={"ranges": {"sepal_length": [4, 8]}}),
            TO_V2,
        ],
    )
    mme_config.tenant(
        "buggy-pre", endpoint="mme", model="iris-lr", preprocess=[custom(f"{HERE}:has_a_bug")]
    )
    mme_config.tenant(
        "buggy-post", endpoint="mme", model="iris-lr", postprocess=[custom(f"{HERE}:has_a_bug")]
    )
    router = await start_router(mme_config)
    sent = orjson.dumps([{"sepal_length": "long"}])
    assert error_parts(await router.invoke("clipped", sent)) == (
        400,
        "invalid_request",
        "preprocess step 0 (examples.steps:clip_features) rejected the input: "
        "record 0 field 'sepal_length' is not a number",
    )
    assert error_parts(await router.invoke("buggy-pre")) == (
        400,
        "invalid_request",
        f"preprocess step 0 ({HERE}:has_a_bug) rejected the input: KeyError: 'oops'",
    )
    assert error_parts(await router.invoke("buggy-post")) == (
        502,
        "upstream_error",
        f"postprocess step 0 ({HERE}:has_a_bug) failed: KeyError: 'oops'",
    )


@pytest.mark.parametrize(
    ("step", "limits", "ending"),
    [
        (custom(f"{HERE}:sleeps_long", timeout_ms=50), {}, "took longer than its 50 ms timeout"),
        (
            custom(f"{HERE}:sleeps_in_a_thread", timeout_ms=50, cpu_heavy=True),
            {},
            "took longer than its 50 ms timeout",
        ),
        (custom(f"{HERE}:blocks_a_while", timeout_ms=20), {}, "took longer than its 20 ms timeout"),
        (
            custom(f"{HERE}:sleeps_long", timeout_ms=60_000),
            {"timeout_ms": 200},
            "the request's timeout ran out in this step",
        ),
    ],
    ids=["async", "cpu_heavy", "plain", "request-deadline"],
)
async def test_a_step_over_its_time_is_504(
    mme_config: ConfigDir,
    start_router: RouterFactory,
    step: dict[str, Any],
    limits: dict[str, Any],
    ending: str,
) -> None:
    mme_config.tenant("slow", endpoint="mme", model="iris-lr", limits=limits, preprocess=[step])
    router = await start_router(mme_config)
    status, code, message = error_parts(await router.invoke("slow"))
    assert (status, code) == (504, "upstream_timeout"), message
    assert message == f"preprocess step 0 ({step['function']}) {ending}"
    assert router.metric("router_step_failures_total", tenant="slow", reason="timeout") == 1
