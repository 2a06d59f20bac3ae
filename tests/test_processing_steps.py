"""The built-in steps in-process: exact outputs, edge cases and the messages callers see."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import TypeAdapter

from router.errors import InvalidRequest, UpstreamError
from router.metrics import RouterMetrics
from router.processing.custom import RequestInfo
from router.processing.interface import StepRejected
from router.processing.payload import Encoded
from router.processing.pipeline import Pipeline, build_step
from tenancy.processing import Step, StepConfig

STEP = TypeAdapter(Step)
INFO = RequestInfo("acme", "m", "default", "r-1")


def apply(config: dict[str, Any], payload: Any) -> Any:
    step = build_step(STEP.validate_python(config))
    return step.apply(payload)


def rejected(config: dict[str, Any], payload: Any) -> str:
    with pytest.raises(StepRejected) as caught:
        apply(config, payload)
    return str(caught.value)


def v2_answer(data: list[Any], shape: list[int], name: str = "predict") -> dict[str, Any]:
    return {"model_name": "m", "outputs": [{"name": name, "shape": shape, "datatype": "FP64",
                                            "data": data}]}  # fmt: skip


def test_records_to_v2_orders_features_and_requests_outputs() -> None:
    config = {"step": "records_to_v2", "features": ["b", "a"], "outputs": ["predict_proba"]}
    assert apply(config, [{"a": 1, "b": 2.5}, {"a": 3, "b": 4, "c": "ignored"}]) == {
        "inputs": [
            {"name": "input-0", "shape": [2, 2], "datatype": "FP64", "data": [2.5, 1, 4, 3]}
        ],
        "outputs": [{"name": "predict_proba"}],
    }
    single = apply({"step": "records_to_v2", "features": ["a"]}, {"a": 1.0})
    assert single["inputs"][0]["shape"] == [1, 1]


def test_records_to_v2_rejects_what_is_not_a_feature_vector() -> None:
    config = {"step": "records_to_v2", "features": ["a"]}
    assert rejected(config, [{"b": 1}]) == "record 0 has no field 'a'"
    assert (
        rejected(config, [{"a": 1}, {"a": True}]) == "record 1 field 'a' is a boolean, not a number"
    )
    assert rejected(config, [{"a": 1}, 5]) == "record 1 is a number, not an object"
    assert rejected(config, None) == "expected an object or a list of objects, got null"
    integers = {"step": "records_to_v2", "features": ["a"], "datatype": "INT64"}
    assert apply(integers, [{"a": 2.0}])["inputs"][0]["data"] == [2]
    assert rejected(integers, [{"a": 2.5}]) == "record 0 field 'a' is not an integer: 2.5"


def test_records_to_csv() -> None:
    config = {"step": "records_to_csv", "features": ["x", "note"], "header": True}
    out = apply(config, [{"x": 1.5, "note": 'say "hi", then'}, {"x": 2, "note": None}])
    assert out == Encoded(b'x,note\n1.5,"say ""hi"", then"\n2,\n', "text/csv")
    assert rejected(config, [{"x": [1], "note": ""}]) == (
        "record 0 field 'x' is an array, not a CSV value"
    )


def test_csv_to_json() -> None:
    assert apply({"step": "csv_to_json"}, Encoded(b"0.25\n0.75\n", "text/csv")) == [0.25, 0.75]
    assert apply({"step": "csv_to_json"}, Encoded(b"1,2\n3,x\n", "text/csv")) == [[1, 2], [3, "x"]]
    with_header = apply(
        {"step": "csv_to_json", "header": True}, Encoded(b'a,b\n1,"q, r"\n', "text/csv")
    )
    assert with_header == [{"a": 1, "b": "q, r"}]


def test_v2_to_json_values_and_records() -> None:
    answer = {
        "outputs": [
            {"name": "predict", "shape": [2, 1], "datatype": "INT64", "data": [0, 2]},
            {"name": "proba", "shape": [2, 3], "datatype": "FP64", "data": [0.9, 0.1, 0, 0, 0.2, 0.8]},
        ]
    }  # fmt: skip
    assert apply({"step": "v2_to_json"}, answer) == [0, 2]
    assert apply({"step": "v2_to_json", "output": "proba"}, answer) == [
        [0.9, 0.1, 0],
        [0, 0.2, 0.8],
    ]
    assert apply({"step": "v2_to_json", "format": "records"}, answer) == [
        {"predict": 0, "proba": [0.9, 0.1, 0]},
        {"predict": 2, "proba": [0, 0.2, 0.8]},
    ]
    cube = v2_answer(list(range(8)), [2, 2, 2])
    assert apply({"step": "v2_to_json"}, cube) == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    assert rejected({"step": "v2_to_json"}, v2_answer([1, 2, 3], [2, 2])) == (
        "output 'predict' has 3 values for shape [2, 2]"
    )
    assert rejected({"step": "v2_to_json"}, {"predictions": [1]}) == (
        "expected an Open Inference Protocol response with outputs"
    )


def test_record_steps() -> None:
    sent = [{"a": 1, "b": 2, "c": None}, {"a": 3}]
    assert apply({"step": "select", "fields": ["a", "c"]}, sent) == [{"a": 1, "c": None}, {"a": 3}]
    assert apply({"step": "select", "fields": ["a"]}, {"a": 1, "b": 2}) == {"a": 1}
    assert apply({"step": "rename", "fields": {"a": "z"}}, [{"a": 1, "b": 2}]) == [{"b": 2, "z": 1}]
    assert apply({"step": "defaults", "values": {"c": 0, "d": "x"}}, [{"c": None}, {"c": 5}]) == [
        {"c": 0, "d": "x"},
        {"c": 5, "d": "x"},
    ]
    assert apply(
        {"step": "inject", "values": {"tenant_tier": "gold"}}, {"tenant_tier": "free"}
    ) == {"tenant_tier": "gold"}
    assert (
        rejected({"step": "rename", "fields": {"a": "b"}}, [1])
        == "record 0 is a number, not an object"
    )


def test_injected_values_are_fresh_per_request() -> None:
    """A later step mutating an injected list must not change the config for the next request."""
    step = build_step(STEP.validate_python({"step": "inject", "values": {"tags": ["a"]}}))
    first: Any = step.apply({})
    first["tags"].append("mutated")
    assert step.apply({}) == {"tags": ["a"]}


def test_label_map() -> None:
    labels = {"step": "label_map", "labels": ["no", "yes"]}
    assert apply(labels, [0, 1.0, [1, 0]]) == ["no", "yes", ["yes", "no"]]
    assert apply({**labels, "field": "c"}, [{"c": 1}]) == [{"c": "yes"}]
    assert apply({**labels, "unknown": "keep"}, [0, 7]) == ["no", 7]
    assert rejected(labels, [2]) == "no label for 2"
    assert rejected(labels, {"c": 1}) == "got an object: set 'field' to map a record's field"
    sparse = {"step": "label_map", "labels": {10: "ten", "20": "twenty"}}
    assert apply(sparse, [10, 20]) == ["ten", "twenty"]


def test_top_k_threshold_round() -> None:
    top = {"step": "top_k", "k": 2, "labels": ["a", "b", "c"]}
    assert apply(top, [0.2, 0.5, 0.3]) == [
        {"label": "b", "score": 0.5},
        {"label": "c", "score": 0.3},
    ]
    assert apply({"step": "top_k", "k": 2}, [[0.5, 0.5, 0.0]]) == [
        [{"label": 0, "score": 0.5}, {"label": 1, "score": 0.5}]  # a tie keeps index order
    ]
    assert rejected(top, ["x"]) == "expected a list of scores, got an array"
    threshold = {"step": "threshold", "threshold": 0.5, "above": "fraud", "below": "ok"}
    assert apply(threshold, [0.5, 0.49, [0.9]]) == ["fraud", "ok", ["fraud"]]
    assert rejected(threshold, ["high"]) == "a string is not a number to compare"
    assert apply({"step": "round", "digits": 2}, [1.23456, 2, [0.005]]) == [1.23, 2, [0.01]]
    assert apply({"step": "round", "digits": 0, "field": "p"}, [{"p": 2.6, "q": 1.4}]) == [
        {"p": 3.0, "q": 1.4}
    ]


async def test_pipeline_maps_failures_to_the_stage_s_error() -> None:
    configs: list[StepConfig] = [STEP.validate_python({"step": "label_map", "labels": ["a"]})]
    metrics = RouterMetrics()
    deadline = asyncio.get_running_loop().time() + 5
    pre = Pipeline("acme", "preprocess", configs, metrics)
    post = Pipeline("acme", "postprocess", configs, metrics)
    out = await pre.run(b"[0, 0]", "application/json", INFO, deadline=deadline)
    assert out == Encoded(b'["a","a"]', "application/json")
    with pytest.raises(
        InvalidRequest, match=r"^preprocess step 0 \(label_map\) rejected the input"
    ):
        await pre.run(b"[1]", "application/json", INFO, deadline=deadline)
    with pytest.raises(UpstreamError, match=r"^postprocess step 0 \(label_map\) failed: no label"):
        await post.run(b"[1]", "application/json", INFO, deadline=deadline)
    with pytest.raises(UpstreamError, match="needs JSON, but the model's answer is not JSON"):
        await post.run(b"<html>", "text/html", INFO, deadline=deadline)
    # No steps: the very same bytes come back, unparsed.
    body = b"not json at all"
    empty = await Pipeline("acme", "preprocess", [], metrics).run(
        body, "text/plain", INFO, deadline=deadline
    )
    assert empty.body is body
