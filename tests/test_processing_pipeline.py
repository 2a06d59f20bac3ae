"""Built-in steps on real inference (MLServer), per-variant steps, the error paths and the fast path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.router_fixtures import ConfigDir, RouterFactory, error_parts, model_predict, v2_body

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1]]
SPECIES = ["setosa", "versicolor", "virginica"]
DIABETES_ROW = [0.03, 0.05, 0.06, 0.02, -0.04, -0.03, -0.04, -0.002, 0.02, -0.02]
DIABETES_FEATURES = [f"x{i}" for i in range(10)]
TO_V2 = {"step": "records_to_v2", "features": FEATURES}


def records(rows: list[list[float]], names: list[str] = FEATURES) -> list[dict[str, float]]:
    return [dict(zip(names, row, strict=True)) for row in rows]


async def test_records_to_v2_to_iris_to_labels(
    mme_config: ConfigDir, start_router: RouterFactory, models_dir: Path
) -> None:
    mme_config.tenant(
        "flowers",
        endpoint="mme",
        model="iris-lr",
        preprocess=[TO_V2],
        postprocess=[
            {"step": "v2_to_json"},
            {"step": "label_map", "labels": SPECIES},
        ],
    )
    router = await start_router(mme_config)
    status, headers, body = await router.invoke("flowers", orjson.dumps(records(IRIS_ROWS)))
    assert status == 200, body
    expected = [SPECIES[int(c)] for c in model_predict(models_dir, "iris-lr", IRIS_ROWS)]
    assert orjson.loads(body) == expected
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Model-Id"] == "iris-lr"
    assert headers["X-Variant"] == "default"
    # One object (not a list) is one record.
    status, _, body = await router.invoke("flowers", orjson.dumps(records(IRIS_ROWS[:1])[0]))
    assert (status, orjson.loads(body)) == (200, expected[:1])


async def test_record_steps_before_the_model(
    mme_config: ConfigDir, start_router: RouterFactory, models_dir: Path
) -> None:
    """rename, defaults and inject shape the caller's fields into the model's features."""
    mme_config.tenant(
        "flowers",
        endpoint="mme",
        model="iris-tree",
        preprocess=[
            {"step": "rename", "fields": {"sl": "sepal_length", "pl": "petal_length"}},
            {"step": "defaults", "values": {"petal_width": 0.2}},
            {"step": "inject", "values": {"sepal_width": 3.5}},
            {"step": "select", "fields": FEATURES},
            TO_V2,
        ],
        postprocess=[{"step": "v2_to_json"}],
    )
    router = await start_router(mme_config)
    sent = [
        {"sl": 5.1, "pl": 1.4, "sepal_width": 99.0, "note": "ignored"},  # inject overwrites 99
        {"sl": 6.9, "pl": 5.4, "petal_width": 2.1, "sepal_width": 0.0},
        {"sl": 6.0, "pl": 4.5, "petal_width": None},  # null is filled by defaults
    ]
    rows = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.5, 5.4, 2.1], [6.0, 3.5, 4.5, 0.2]]
    status, _, body = await router.invoke("flowers", orjson.dumps(sent))
    assert status == 200, body
    assert orjson.loads(body) == model_predict(models_dir, "iris-tree", rows)


async def test_top_k_on_predict_proba(
    mme_config: ConfigDir, start_router: RouterFactory, models_dir: Path
) -> None:
    mme_config.tenant(
        "flowers",
        endpoint="mme",
        model="iris-lr",
        preprocess=[{**TO_V2, "outputs": ["predict_proba"]}],
        postprocess=[
            {"step": "v2_to_json"},
            {"step": "top_k", "k": 2, "labels": SPECIES},
            {"step": "round", "digits": 3, "field": None},
        ],
    )
    router = await start_router(mme_config)
    status, _, body = await router.invoke("flowers", orjson.dumps(records(IRIS_ROWS)))
    assert status == 200, body
    ranked = orjson.loads(body)
    predicted = model_predict(models_dir, "iris-lr", IRIS_ROWS)
    assert len(ranked) == 3
    for row, best_class in zip(ranked, predicted, strict=True):
        assert row[0]["label"] == SPECIES[int(best_class)]
        assert len(row) == 2
        assert row[0]["score"] >= row[1]["score"]


async def test_records_output_select_and_rename_after_the_model(
    mme_config: ConfigDir, start_router: RouterFactory, models_dir: Path
) -> None:
    mme_config.tenant(
        "flowers",
        endpoint="mme",
        model="iris-knn",
        preprocess=[{**TO_V2, "outputs": ["predict", "predict_proba"]}],
        postprocess=[
            {"step": "v2_to_json", "format": "records"},
            {"step": "select", "fields": ["predict"]},
            {"step": "rename", "fields": {"predict": "species"}},
            {"step": "label_map", "labels": SPECIES, "field": "species"},
        ],
    )
    router = await start_router(mme_config)
    status, _, body = await router.invoke("flowers", orjson.dumps(records(IRIS_ROWS)))
    assert status == 200, body
    expected = [SPECIES[int(c)] for c in model_predict(models_dir, "iris-knn", IRIS_ROWS)]
    assert orjson.loads(body) == [{"species": s} for s in expected]


async def test_threshold_and_round_on_a_regression(
    mme_config: ConfigDir, start_router: RouterFactory, models_dir: Path
) -> None:
    value = model_predict(models_dir, "diabetes-lr", [DIABETES_ROW])[0]
    mme_config.tenant(
        "clinic",
        endpoint="mme",
        model="diabetes-lr",
        preprocess=[{"step": "records_to_v2", "features": DIABETES_FEATURES}],
        postprocess=[{"step": "v2_to_json"}, {"step": "round", "digits": 1}],
    )
    mme_config.tenant(
        "triage",
        endpoint="mme",
        model="diabetes-lr",
        preprocess=[{"step": "records_to_v2", "features": DIABETES_FEATURES}],
        postprocess=[
            {"step": "v2_to_json", "format": "records"},
            {"step": "threshold", "threshold": value - 1, "above": "high", "below": "low",
             "field": "predict"},
        ],
    )  # fmt: skip
    router = await start_router(mme_config)
    body = orjson.dumps(records([DIABETES_ROW], DIABETES_FEATURES))
    status, _, answer = await router.invoke("clinic", body)
    assert (status, orjson.loads(answer)) == (200, [round(value, 1)])
    status, _, answer = await router.invoke("triage", body)
    assert (status, orjson.loads(answer)) == (200, [{"predict": "high"}])


async def test_records_to_csv_reaches_a_csv_speaking_endpoint_as_csv(
    tmp_path: Path,
    start_router: RouterFactory,
    sagemaker_front: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SageMaker XGBoost-style endpoints take text/csv: the front records what really arrived."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {
            "sm": {
                "kind": "sagemaker",
                "endpoint_name": "mme-test",
                "region": "us-east-1",
                "endpoint_url": sagemaker_front.url,
            }
        }
    )
    cfg.tenant(
        "scores",
        endpoint="sm",
        model="iris-lr",
        preprocess=[{"step": "records_to_csv", "features": FEATURES}],
    )
    router = await start_router(cfg)
    await router.invoke("scores", orjson.dumps(records(IRIS_ROWS[:2])))
    (arrived,) = sagemaker_front.requests_for("iris-lr")
    assert arrived.content_type == "text/csv"
    assert arrived.body == b"5.1,3.5,1.4,0.2\n6.0,2.9,4.5,1.5\n"


async def test_a_variant_s_steps_replace_the_tenant_s(
    mme_config: ConfigDir, start_router: RouterFactory, models_dir: Path
) -> None:
    mme_config.tenant(
        "flowers",
        endpoint="mme",
        model="iris-lr",
        preprocess=[TO_V2],
        postprocess=[{"step": "v2_to_json"}],
        experiment={
            "name": "labels",
            "kind": "ab",
            "variants": [
                {"name": "plain", "model": "iris-lr", "weight": 1},
                {
                    "name": "named",
                    "model": "iris-tree",
                    "weight": 1,
                    "postprocess": [
                        {"step": "v2_to_json"},
                        {"step": "label_map", "labels": SPECIES},
                    ],
                },
            ],
            "overrides": {"plain": ["u-plain"], "named": ["u-named"]},
        },
    )
    router = await start_router(mme_config)
    sent = orjson.dumps(records(IRIS_ROWS))
    status, headers, body = await router.invoke("flowers", sent, unit="u-plain")
    assert (status, headers["X-Variant"]) == (200, "plain")
    assert orjson.loads(body) == model_predict(models_dir, "iris-lr", IRIS_ROWS)
    status, headers, body = await router.invoke("flowers", sent, unit="u-named")
    assert (status, headers["X-Variant"], headers["X-Model-Id"]) == (200, "named", "iris-tree")
    tree = model_predict(models_dir, "iris-tree", IRIS_ROWS)
    assert orjson.loads(body) == [SPECIES[int(c)] for c in tree]


# --- errors -------------------------------------------------------------------------------------


async def test_a_pre_step_rejecting_the_input_is_400_naming_the_step(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    mme_config.tenant("flowers", endpoint="mme", model="iris-lr", preprocess=[TO_V2])
    router = await start_router(mme_config)
    missing = records(IRIS_ROWS[:1])
    del missing[0]["petal_width"]
    cases = [
        (orjson.dumps(missing), "record 0 has no field 'petal_width'"),
        (b"[{]", "needs JSON, but the body is not JSON"),
        (b'"text"', "expected an object or a list of objects, got a string"),
        (orjson.dumps([{**records(IRIS_ROWS[:1])[0], "sepal_width": "wide"}]), "not a number"),
    ]
    for sent, reason in cases:
        status, code, message = error_parts(await router.invoke("flowers", sent))
        assert (status, code) == (400, "invalid_request"), message
        assert message.startswith("preprocess step 0 (records_to_v2) "), message
        assert reason in message
    failures = router.metric(
        "router_step_failures_total", tenant="flowers", stage="preprocess", reason="rejected"
    )
    assert failures == len(cases)


async def test_a_post_step_failing_is_502_with_the_reason(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    # iris predicts 0..2; a two-label map has no label for class 2 (virginica).
    mme_config.tenant(
        "flowers",
        endpoint="mme",
        model="iris-lr",
        preprocess=[TO_V2],
        postprocess=[{"step": "v2_to_json"}, {"step": "label_map", "labels": ["a", "b"]}],
    )
    router = await start_router(mme_config)
    status, headers, body = await router.invoke("flowers", orjson.dumps(records(IRIS_ROWS)))
    status, code, message = error_parts((status, None, body))
    assert (status, code) == (502, "upstream_error")
    assert message == "postprocess step 1 (label_map) failed: no label for 2"
    assert headers["X-Model-Id"] == "iris-lr"


async def test_a_model_answer_that_is_not_v2_fails_the_post_step(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    mme_config.tenant(
        "flowers",
        endpoint="mme",
        model="iris-lr",
        postprocess=[{"step": "v2_to_json", "output": "predict_proba"}],
    )
    router = await start_router(mme_config)
    status, _, body = await router.invoke("flowers", v2_body(IRIS_ROWS))
    assert error_parts((status, None, body)) == (
        502,
        "upstream_error",
        "postprocess step 0 (v2_to_json) failed: no output named 'predict_proba'",
    )


async def test_without_steps_the_body_is_forwarded_unparsed(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    """The fast path: no route processing is compiled, so nothing can parse the body."""
    mme_config.tenant("plain", endpoint="mme", model="iris-lr")
    mme_config.tenant(
        "steps", endpoint="mme", model="iris-lr", postprocess=[{"step": "round", "digits": 2}]
    )
    router = await start_router(mme_config)
    from router.keys import STATE

    routes = router.app[STATE].table.routes
    assert routes["plain"].processing is None
    assert routes["steps"].processing is not None
    status, _, body = await router.invoke("plain", v2_body(IRIS_ROWS) + b"   ")
    assert status == 200, body
