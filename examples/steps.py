"""Example custom code for tenant processing, referenced as ``examples.steps:<function>``.

The interface is documented in ``router/processing/interface.py``. In short: a step is
``(payload, context) -> payload``, plain or ``async``; raise ``StepRejected`` to refuse the payload.
Wire them up in a tenant file, for example (``examples/config-processing/tenants/flowers.yaml``)::

    preprocess:
      - step: custom
        function: examples.steps:clip_features
        timeout_ms: 20
        options: {ranges: {sepal_length: [4.0, 8.0], petal_width: [0.1, 2.5]}}
      - {step: records_to_v2, features: [sepal_length, sepal_width, petal_length, petal_width]}
    postprocess:
      - {step: v2_to_json}
      - {step: label_map, labels: [setosa, versicolor, virginica]}
      - {step: custom, function: examples.steps:with_request_id}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from router.processing import AggregateContext, Json, MemberResult, StepContext, StepRejected


def clip_features(payload: Json, context: StepContext) -> Json:
    """Preprocess: clamp numeric fields into ``options.ranges`` ({field: [low, high]}).

    A quick, plain function: it runs on the event loop. A missing or non-numeric field is refused,
    which the caller sees as 400 ``invalid_request`` naming this step.
    """
    ranges = context.options.get("ranges")
    if not isinstance(ranges, dict):
        raise StepRejected("options.ranges must map field -> [low, high]")
    records = payload if isinstance(payload, list) else [payload]
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            raise StepRejected(f"record {row} is not an object")
        for field, bounds in ranges.items():
            value = record.get(field)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise StepRejected(f"record {row} field {field!r} is not a number")
            if isinstance(bounds, list) and len(bounds) == 2:
                low, high = bounds
                if isinstance(low, int | float) and isinstance(high, int | float):
                    record[field] = min(max(value, low), high)
    return payload


async def with_request_id(payload: Json, context: StepContext) -> Json:
    """Postprocess: wrap the answer with what produced it. Async steps may await I/O (a feature
    store, a cache); this one needs none but shows the shape."""
    return {
        "request_id": context.request_id,
        "model": context.model,
        "variant": context.variant,
        "predictions": payload,
    }


def majority_with_share(results: Sequence[MemberResult], context: AggregateContext) -> Json:
    """Ensemble aggregator: per row, the majority class and the share of models that chose it.

    Each result's output is the model's parsed V2 answer; the first output is used.
    """
    columns: list[list[Json]] = []
    for result in results:
        outputs = result.output.get("outputs") if isinstance(result.output, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise ValueError(f"{result.model} did not answer in the V2 format")
        first = outputs[0]
        data = first.get("data") if isinstance(first, dict) else None
        if not isinstance(data, list):
            raise ValueError(f"{result.model} answered no data")
        columns.append(data)
    rows: list[Json] = []
    for votes in zip(*columns, strict=True):
        winner, count = Counter(votes).most_common(1)[0]
        rows.append({"prediction": winner, "share": round(count / len(votes), 3)})
    return rows


def same_top_class(primary: Json, shadow: Json) -> bool:
    """Shadow comparator: both V2 answers predict the same classes (other outputs may differ)."""

    def classes(answer: Json) -> Json:
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        for output in outputs if isinstance(outputs, list) else []:
            if isinstance(output, dict) and output.get("name") == "predict":
                return output.get("data")
        return None

    found = classes(primary)
    return found is not None and found == classes(shadow)
