"""Choosing and combining models on real MLServer: ensembles (vote, mean, first success, custom,
partial failure), fallback, and dynamic selection from an input field."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.router_fixtures import (
    ConfigDir,
    RouterFactory,
    error_parts,
    model_predict,
    output_data,
    v2_body,
)

IRIS = ["iris-lr", "iris-tree", "iris-knn"]
# Rows near the versicolor/virginica border, where the three models do not always agree.
ROWS = [
    [5.1, 3.5, 1.4, 0.2],
    [6.0, 2.2, 5.0, 1.5],
    [6.3, 2.8, 5.1, 1.5],
    [4.9, 2.5, 4.5, 1.7],
    [6.1, 3.0, 4.9, 1.8],
    [7.2, 3.0, 5.8, 1.6],
    [5.9, 3.2, 4.8, 1.8],
]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
MISSING = "no-such-model"


@pytest.fixture(scope="module")
def predictions(models_dir: Path) -> dict[str, list[float]]:
    return {model: model_predict(models_dir, model, ROWS) for model in IRIS}


def majority(columns: list[list[float]]) -> list[float]:
    voted = []
    for votes in zip(*columns, strict=True):
        counts = Counter(votes)
        best = max(counts.values())
        voted.append(next(v for v in votes if counts[v] == best))  # ties: the model listed first
    return voted


async def test_a_vote_across_three_models(
    mme_config: ConfigDir, start_router: RouterFactory, predictions: dict[str, list[float]]
) -> None:
    mme_config.tenant("vote", endpoint="mme", model="iris-lr",
                  ensemble={"models": IRIS, "aggregate": "vote"})  # fmt: skip
    router = await start_router(mme_config)
    status, headers, body = await router.invoke("vote", v2_body(ROWS))
    assert status == 200, body
    assert headers["X-Variant"] == "ensemble"
    assert headers["X-Model-Id"] == ",".join(IRIS)
    answer = orjson.loads(body)
    assert answer["model_name"] == "ensemble"
    assert answer["outputs"][0]["shape"] == [len(ROWS), 1]
    assert output_data(body) == majority([predictions[m] for m in IRIS])
    for model in IRIS:
        assert router.metric("router_ensemble_members_total", model=model, result="ok") == 1
    assert router.metric("router_requests_total", tenant="vote", variant="ensemble") == 1


async def test_mean_and_a_custom_aggregator(
    mme_config: ConfigDir, start_router: RouterFactory, predictions: dict[str, list[float]]
) -> None:
    mme_config.tenant(
        "mean", endpoint="mme", model="iris-lr", ensemble={"models": IRIS, "aggregate": "mean"}
    )
    mme_config.tenant("custom", endpoint="mme", model="iris-lr",
                  ensemble={"models": IRIS, "aggregate": "custom",
                            "function": "examples.steps:majority_with_share"})  # fmt: skip
    router = await start_router(mme_config)
    status, _, body = await router.invoke("mean", v2_body(ROWS))
    assert status == 200, body
    assert orjson.loads(body)["outputs"][0]["datatype"] == "FP64"
    expected = [sum(v) / 3 for v in zip(*(predictions[m] for m in IRIS), strict=True)]
    assert output_data(body) == pytest.approx(expected)
    status, _, body = await router.invoke("custom", v2_body(ROWS))
    assert status == 200, body
    shares = orjson.loads(body)
    assert [s["prediction"] for s in shares] == majority([predictions[m] for m in IRIS])
    assert all(s["share"] in (0.333, 0.667, 1.0) for s in shares)


async def test_the_partial_failure_policy(
    mme_config: ConfigDir, start_router: RouterFactory, predictions: dict[str, list[float]]
) -> None:
    members = ["iris-lr", "iris-tree", MISSING]
    mme_config.tenant(
        "two-of-three",
        endpoint="mme",
        model="iris-lr",
        ensemble={"models": members, "aggregate": "vote", "min_success": 2},
    )
    mme_config.tenant(
        "all", endpoint="mme", model="iris-lr", ensemble={"models": members, "aggregate": "vote"}
    )
    mme_config.tenant("first", endpoint="mme", model="iris-lr",
                  ensemble={"models": [MISSING, "iris-tree"], "aggregate": "first_success"})  # fmt: skip
    router = await start_router(mme_config)
    status, headers, body = await router.invoke("two-of-three", v2_body(ROWS))
    assert status == 200, body
    assert headers["X-Model-Id"] == "iris-lr,iris-tree"
    assert output_data(body) == majority([predictions["iris-lr"], predictions["iris-tree"]])
    failed = router.metric(
        "router_ensemble_members_total",
        tenant="two-of-three",
        model=MISSING,
        result="upstream_error",
    )
    assert failed == 1

    status, code, message = error_parts(await router.invoke("all", v2_body(ROWS)))
    assert (status, code) == (502, "upstream_error")
    # It stops as soon as the policy cannot be met: the others may not have answered yet.
    assert re.match(rf"ensemble: [0-2] of 3 models answered, 3 needed \({MISSING}: ", message)

    status, headers, body = await router.invoke("first", v2_body(ROWS))
    assert (status, headers["X-Model-Id"]) == (200, "iris-tree")
    assert output_data(body) == predictions["iris-tree"]


# --- fallback -----------------------------------------------------------------------------------


async def test_the_fallback_answers_when_the_primary_cannot_load(
    mme_config: ConfigDir, start_router: RouterFactory, predictions: dict[str, list[float]]
) -> None:
    mme_config.tenant("acme", endpoint="mme", model=MISSING, fallback={"model": "iris-lr"})
    router = await start_router(mme_config)
    status, headers, body = await router.invoke("acme", v2_body(ROWS))
    assert status == 200, body
    assert (headers["X-Variant"], headers["X-Model-Id"]) == ("fallback", "iris-lr")
    assert output_data(body) == predictions["iris-lr"]
    assert (
        router.metric(
            "router_fallbacks_total", tenant="acme", model="iris-lr", reason="upstream_error"
        )
        == 1
    )
    assert (
        router.metric("router_requests_total", tenant="acme", variant="fallback", code="200") == 1
    )


async def test_when_the_fallback_fails_too_both_reasons_are_given(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    mme_config.tenant("acme", endpoint="mme", model=MISSING, fallback={"model": "also-missing"})
    router = await start_router(mme_config)
    status, headers, body = await router.invoke("acme", v2_body(ROWS))
    status, code, message = error_parts((status, headers, body))
    assert (status, code) == (502, "upstream_error")
    assert "'also-missing'" in message
    assert f"(the fallback, after {MISSING!r} failed: " in message
    assert (headers["X-Variant"], headers["X-Model-Id"]) == ("default", MISSING)


async def test_no_fallback_for_reasons_not_listed_or_for_rejected_input(
    mme_config: ConfigDir, start_router: RouterFactory
) -> None:
    mme_config.tenant(
        "timeouts-only",
        endpoint="mme",
        model=MISSING,
        fallback={"model": "iris-lr", "on": ["upstream_timeout"]},
    )
    mme_config.tenant("acme", endpoint="mme", model="iris-tree", fallback={"model": "iris-lr"})  # fmt: skip
    router = await start_router(mme_config)
    assert error_parts(await router.invoke("timeouts-only", v2_body(ROWS)))[:2] == (
        502,
        "upstream_error",
    )
    # The model refuses the input (an output it does not have): the caller's problem, not an outage.
    refused = orjson.loads(v2_body(ROWS))
    refused["outputs"] = [{"name": "no_such_output"}]
    status, code, _ = error_parts(await router.invoke("acme", orjson.dumps(refused)))
    assert (status, code) == (400, "invalid_request")
    assert router.metric("router_fallbacks_total") == 0


# --- dynamic selection --------------------------------------------------------------------------


async def test_the_model_is_selected_from_an_input_field(
    mme_config: ConfigDir, start_router: RouterFactory, predictions: dict[str, list[float]]
) -> None:
    mme_config.tenant(
        "shop",
        endpoint="mme",
        model="iris-lr",
        select_model={
            "field": "product_type",
            "models": {"linear": "iris-lr", "tree": "iris-tree"},
            "default": "iris-knn",
        },
        preprocess=[{"step": "records_to_v2", "features": FEATURES}],
        postprocess=[{"step": "v2_to_json"}],
    )
    router = await start_router(mme_config)

    def sent(product_type: str | None) -> bytes:
        rows = [dict(zip(FEATURES, row, strict=True)) for row in ROWS]
        if product_type is not None:
            for row in rows:
                row["product_type"] = product_type  # type: ignore[assignment]
        return orjson.dumps(rows)

    for product_type, model in [("linear", "iris-lr"), ("tree", "iris-tree"),
                                ("other", "iris-knn"), (None, "iris-knn")]:  # fmt: skip
        status, headers, body = await router.invoke("shop", sent(product_type))
        assert (status, headers["X-Model-Id"]) == (200, model), body
        assert orjson.loads(body) == predictions[model]
    assert router.metric("router_model_selections_total", tenant="shop", model="iris-knn") == 2

    mixed = orjson.loads(sent("linear"))
    mixed[0]["product_type"] = "tree"
    status, code, message = error_parts(await router.invoke("shop", orjson.dumps(mixed)))
    assert (status, code) == (400, "invalid_request")
    assert "different 'product_type' values" in message


async def test_selection_without_steps_forwards_the_body_and_needs_a_match(
    mme_config: ConfigDir, start_router: RouterFactory, predictions: dict[str, list[float]]
) -> None:
    """A V2 request names its kind in ``parameters``; the body itself goes upstream unchanged."""
    mme_config.tenant(
        "shop",
        endpoint="mme",
        model="iris-lr",
        select_model={"field": "parameters.kind", "models": {"tree": "iris-tree"}},
    )
    router = await start_router(mme_config)
    request = orjson.loads(v2_body(ROWS))
    request["parameters"] = {"kind": "tree"}
    status, headers, body = await router.invoke("shop", orjson.dumps(request))
    assert (status, headers["X-Model-Id"]) == (200, "iris-tree"), body
    assert output_data(body) == predictions["iris-tree"]
    request["parameters"] = {"kind": "forest"}
    assert error_parts(await router.invoke("shop", orjson.dumps(request))) == (
        400,
        "invalid_request",
        "no model for parameters.kind='forest' (known: tree)",
    )
    assert error_parts(await router.invoke("shop", b"not json"))[:2] == (400, "invalid_request")
