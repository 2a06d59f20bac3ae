"""The built-in steps: each a small class compiled once from its config, with one ``apply`` method.

They are pure, synchronous and cheap (a few microseconds on a small record), mutate the request's own
parsed payload in place where that is the natural result, and raise StepRejected, with a message the
caller can act on, when the payload does not fit.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from pydantic import JsonValue

from router.processing.interface import Json, StepRejected
from router.processing.payload import Encoded, Payload, Step
from tenancy.processing import (
    CsvToJson,
    Defaults,
    Inject,
    LabelMap,
    RecordsToCsv,
    RecordsToV2,
    Rename,
    Round,
    Select,
    StepConfig,
    Threshold,
    TopK,
    V2ToJson,
)

_JSON_KIND = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _JSON_KIND.get(type(value), type(value).__name__)


def records_of(payload: Payload) -> list[dict[str, Json]]:
    """One object or a list of objects, as a list (the same dicts, not copies)."""
    if isinstance(payload, dict):
        return [payload]
    if isinstance(payload, list):
        records = [item for item in payload if isinstance(item, dict)]
        if len(records) != len(payload):
            index, item = next((i, v) for i, v in enumerate(payload) if not isinstance(v, dict))
            raise StepRejected(f"record {index} is {kind_of(item)}, not an object")
        return records
    raise StepRejected(f"expected an object or a list of objects, got {kind_of(payload)}")


class Constant:
    """A config value handed out per request: a fresh copy when it is mutable, so a later step that
    mutates its payload cannot change the config for the next request."""

    __slots__ = ("_encoded", "_value")

    def __init__(self, value: JsonValue) -> None:
        mutable = isinstance(value, dict | list)
        self._value: Json = None if mutable else value
        self._encoded = orjson.dumps(value) if mutable else None

    def get(self) -> Json:
        if self._encoded is None:
            return self._value
        fresh: Json = orjson.loads(self._encoded)
        return fresh


# --- request encoders ---------------------------------------------------------------------------


def _number(value: Json, feature: str, row: int, integer: bool) -> int | float:
    if type(value) is float:
        if integer:
            if not value.is_integer():
                raise StepRejected(f"record {row} field {feature!r} is not an integer: {value}")
            return int(value)
        return value
    if type(value) is int:
        return value
    raise StepRejected(f"record {row} field {feature!r} is {kind_of(value)}, not a number")


class RecordsToV2Step(Step):
    label = "records_to_v2"

    def __init__(self, config: RecordsToV2) -> None:
        self.features = config.features
        self.input_name = config.input_name
        self.datatype = config.datatype
        self.integer = config.datatype.startswith("INT")
        self.outputs = config.outputs

    def apply(self, payload: Payload) -> Payload:
        records = records_of(payload)
        integer = self.integer
        data: list[Json] = []
        append = data.append
        for row, record in enumerate(records):
            for feature in self.features:
                try:
                    value = record[feature]
                except KeyError:
                    raise StepRejected(f"record {row} has no field {feature!r}") from None
                append(_number(value, feature, row, integer))
        tensor: dict[str, Json] = {
            "name": self.input_name,
            "shape": [len(records), len(self.features)],
            "datatype": self.datatype,
            "data": data,
        }
        request: dict[str, Json] = {"inputs": [tensor]}
        if self.outputs:
            request["outputs"] = [{"name": name} for name in self.outputs]
        return request


def _csv_cell(value: Json, feature: str, row: int) -> str:
    if type(value) is float or type(value) is int:
        return repr(value)
    if isinstance(value, str):
        if any(c in value for c in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    raise StepRejected(f"record {row} field {feature!r} is {kind_of(value)}, not a CSV value")


class RecordsToCsvStep(Step):
    label = "records_to_csv"

    def __init__(self, config: RecordsToCsv) -> None:
        self.features = config.features
        self.header = ",".join(_csv_cell(f, f, 0) for f in config.features) if config.header else ""
        self.content_type = config.content_type

    def apply(self, payload: Payload) -> Payload:
        lines = [self.header] if self.header else []
        for row, record in enumerate(records_of(payload)):
            cells = []
            for feature in self.features:
                try:
                    value = record[feature]
                except KeyError:
                    raise StepRejected(f"record {row} has no field {feature!r}") from None
                cells.append(_csv_cell(value, feature, row))
            lines.append(",".join(cells))
        lines.append("")
        return Encoded("\n".join(lines).encode(), self.content_type)


# --- response decoders --------------------------------------------------------------------------


def _csv_value(cell: str) -> Json:
    text = cell.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


class CsvToJsonStep(Step):
    label = "csv_to_json"
    accepts_encoded = True

    def __init__(self, config: CsvToJson) -> None:
        self.header = config.header

    def apply(self, payload: Payload) -> Payload:
        if not isinstance(payload, Encoded):
            return payload  # already JSON (the body was parsed for model selection)
        try:
            text = payload.body.decode()
        except UnicodeDecodeError as exc:
            raise StepRejected(f"the body is not UTF-8 text: {exc}") from None
        lines: Iterator[list[str]]
        if '"' in text:
            lines = csv.reader(io.StringIO(text))
        else:
            lines = (line.split(",") for line in text.splitlines())
        rows = [[_csv_value(cell) for cell in line] for line in lines if line and line != [""]]
        if self.header:
            if not rows:
                raise StepRejected("no header line")
            names = [str(name) for name in rows[0]]
            for number, row in enumerate(rows[1:], start=1):
                if len(row) != len(names):
                    raise StepRejected(f"line {number + 1} has {len(row)} values for {len(names)}")
            return [dict(zip(names, row, strict=True)) for row in rows[1:]]
        return [row[0] if len(row) == 1 else row for row in rows]


def _reshape(data: list[Json], dims: list[int]) -> list[Json]:
    if len(dims) == 1:
        return data
    width = math.prod(dims[1:])
    return [_reshape(data[i * width : (i + 1) * width], dims[1:]) for i in range(dims[0])]


def _rows(output: Json) -> list[Json]:
    """One V2 output's rows: shape [n] or [n, 1] gives n values, [n, k] gives n lists of k."""
    if not isinstance(output, dict):
        raise StepRejected(f"an output is {kind_of(output)}, not an object")
    name, data, shape = output.get("name"), output.get("data"), output.get("shape")
    if not isinstance(data, list):
        raise StepRejected(f"output {name!r} has no data list")
    if data and isinstance(data[0], list):
        return data  # already nested by row
    dims = [d for d in shape if type(d) is int and d >= 0] if isinstance(shape, list) else []
    if not isinstance(shape, list) or len(dims) != len(shape):
        raise StepRejected(f"output {name!r} has no valid shape")
    if math.prod(dims) != len(data):
        raise StepRejected(f"output {name!r} has {len(data)} values for shape {dims}")
    if len(dims) <= 1 or math.prod(dims[1:]) == 1:
        return data
    return _reshape(data, dims)


class V2ToJsonStep(Step):
    label = "v2_to_json"

    def __init__(self, config: V2ToJson) -> None:
        self.records = config.format == "records"
        self.output = config.output

    def apply(self, payload: Payload) -> Payload:
        outputs = payload.get("outputs") if isinstance(payload, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise StepRejected("expected an Open Inference Protocol response with outputs")
        if self.records:
            columns = [
                (str(o.get("name")) if isinstance(o, dict) else "", _rows(o)) for o in outputs
            ]
            count = len(columns[0][1])
            if any(len(rows) != count for _, rows in columns):
                raise StepRejected("outputs have different numbers of rows")
            return [{name: rows[i] for name, rows in columns} for i in range(count)]
        if self.output is None:
            return _rows(outputs[0])
        for output in outputs:
            if isinstance(output, dict) and output.get("name") == self.output:
                return _rows(output)
        raise StepRejected(f"no output named {self.output!r}")


# --- record steps -------------------------------------------------------------------------------


class SelectStep(Step):
    label = "select"

    def __init__(self, config: Select) -> None:
        self.fields = config.fields

    def apply(self, payload: Payload) -> Payload:
        fields = self.fields
        picked: list[Json] = [
            {f: record[f] for f in fields if f in record} for record in records_of(payload)
        ]
        return picked[0] if isinstance(payload, dict) else picked


class RenameStep(Step):
    label = "rename"

    def __init__(self, config: Rename) -> None:
        self.pairs = tuple(config.fields.items())

    def apply(self, payload: Payload) -> Payload:
        for record in records_of(payload):
            for old, new in self.pairs:
                if old in record:
                    record[new] = record.pop(old)
        return payload


class DefaultsStep(Step):
    label = "defaults"

    def __init__(self, config: Defaults) -> None:
        self.values = tuple((k, Constant(v)) for k, v in config.values.items())

    def apply(self, payload: Payload) -> Payload:
        for record in records_of(payload):
            for key, value in self.values:
                if record.get(key) is None:
                    record[key] = value.get()
        return payload


class InjectStep(Step):
    label = "inject"

    def __init__(self, config: Inject) -> None:
        self.values = tuple((k, Constant(v)) for k, v in config.values.items())

    def apply(self, payload: Payload) -> Payload:
        for record in records_of(payload):
            for key, value in self.values:
                record[key] = value.get()
        return payload


# --- value steps --------------------------------------------------------------------------------


def _map_values(value: Json, fn: Callable[[Json], Json]) -> Json:
    if isinstance(value, list):
        return [_map_values(item, fn) for item in value]
    return fn(value)


class ValueStep(Step):
    """Maps every value of the payload, or ``field`` of each record, with ``convert``."""

    def __init__(self, field: str | None) -> None:
        self.field = field

    def convert(self, value: Json) -> Json:
        raise NotImplementedError

    def apply(self, payload: Payload) -> Payload:
        field = self.field
        if field is None:
            if isinstance(payload, dict | Encoded):
                raise StepRejected(f"got {kind_of(payload)}: set 'field' to map a record's field")
            return _map_values(payload, self.convert)
        for row, record in enumerate(records_of(payload)):
            try:
                value = record[field]
            except KeyError:
                raise StepRejected(f"record {row} has no field {field!r}") from None
            record[field] = _map_values(value, self.convert)
        return payload


def _index(value: Json) -> int | None:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


class LabelMapStep(ValueStep):
    label = "label_map"

    def __init__(self, config: LabelMap) -> None:
        super().__init__(config.field)
        self.labels = dict(config.labels)
        self.keep_unknown = config.unknown == "keep"

    def convert(self, value: Json) -> Json:
        index = _index(value)
        label = self.labels.get(index) if index is not None else None
        if label is not None:
            return label
        if self.keep_unknown:
            return value
        raise StepRejected(f"no label for {orjson.dumps(value).decode()}")


class ThresholdStep(ValueStep):
    label = "threshold"

    def __init__(self, config: Threshold) -> None:
        super().__init__(config.field)
        self.threshold = config.threshold
        self.above = Constant(config.above)
        self.below = Constant(config.below)

    def convert(self, value: Json) -> Json:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise StepRejected(f"{kind_of(value)} is not a number to compare")
        return self.above.get() if value >= self.threshold else self.below.get()


class RoundStep(ValueStep):
    label = "round"

    def __init__(self, config: Round) -> None:
        super().__init__(config.field)
        self.digits = config.digits

    def convert(self, value: Json) -> Json:
        return round(value, self.digits) if type(value) is float else value


class TopKStep(Step):
    label = "top_k"

    def __init__(self, config: TopK) -> None:
        self.k = config.k
        self.labels = config.labels
        self.field = config.field

    def _rank(self, row: Payload) -> Json:
        if not isinstance(row, list) or not all(
            isinstance(s, int | float) and not isinstance(s, bool) for s in row
        ):
            raise StepRejected(f"expected a list of scores, got {kind_of(row)}")
        scores: list[Any] = row
        # sort is stable, also reversed: ties keep the lower index first
        best = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[: self.k]
        labels = self.labels
        return [{"label": labels[i] if i < len(labels) else i, "score": scores[i]} for i in best]

    def apply(self, payload: Payload) -> Payload:
        if self.field is not None:
            for row, record in enumerate(records_of(payload)):
                if self.field not in record:
                    raise StepRejected(f"record {row} has no field {self.field!r}")
                record[self.field] = self._rank(record[self.field])
            return payload
        if isinstance(payload, list) and payload and isinstance(payload[0], list):
            return [self._rank(row) for row in payload]
        return self._rank(payload)


_BUILTINS: dict[type[Any], Callable[[Any], Step]] = {
    RecordsToV2: RecordsToV2Step,
    RecordsToCsv: RecordsToCsvStep,
    CsvToJson: CsvToJsonStep,
    V2ToJson: V2ToJsonStep,
    Select: SelectStep,
    Rename: RenameStep,
    Defaults: DefaultsStep,
    Inject: InjectStep,
    LabelMap: LabelMapStep,
    TopK: TopKStep,
    Threshold: ThresholdStep,
    Round: RoundStep,
}


def build_builtin(config: StepConfig) -> Step:
    return _BUILTINS[type(config)](config)
