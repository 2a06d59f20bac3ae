"""Processing config of a tenant: pre/post-processing steps, shadow traffic, fallback, ensembles and
dynamic model selection, as frozen, validated models (unknown fields refused).

A step is a mapping with a ``step:`` name and that step's own fields::

    preprocess:
      - {step: rename, fields: {sl: sepal_length}}
      - {step: records_to_v2, features: [sepal_length, sepal_width, petal_length, petal_width]}
    postprocess:
      - {step: v2_to_json}
      - {step: label_map, labels: [setosa, versicolor, virginica]}
      - {step: custom, function: "examples.steps:add_confidence_band", timeout_ms: 50}

Custom code is named ``module:function`` and imported when the file is validated, so a typo or an
import error is a config error (``tenants/acme.yaml: preprocess.2.function: cannot import ...``), never
a failing request. The router compiles these models once per config snapshot
(``router/processing/``); nothing here runs per request.

This module imports nothing else of ``tenancy`` (``tenancy.models`` imports it), which is why the model
id rule is repeated below rather than imported.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from tenancy.fields import ModelId

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
CALLABLE_REF_PATTERN = rf"^{_DOTTED}:{_DOTTED}$"
MAX_STEPS = 32


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ModelRef = ModelId
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
TimeoutMs = Annotated[int, Field(gt=0, le=600_000)]


# --- custom code references ---------------------------------------------------------------------


STEP_MODULES_ENV = "WARMROUTE_STEP_MODULES"


def allowed_prefixes() -> tuple[str, ...]:
    """The module prefixes custom code may come from, read now (at validation), never at import."""
    raw = os.environ.get(STEP_MODULES_ENV, "")
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def check_module_allowed(module_name: str) -> None:
    """Raise ValueError unless ``module_name`` is under a prefix of ``WARMROUTE_STEP_MODULES``.

    A prefix matches at a dotted-name boundary: ``examples.`` and ``examples`` both allow
    ``examples.steps``; ``examples`` also allows the package ``examples`` itself, never
    ``examples_evil``. Checked before anything is imported: a refused module is never loaded.
    """
    prefixes = allowed_prefixes()
    for prefix in prefixes:
        package = prefix.removesuffix(".")
        if (module_name == package and not prefix.endswith(".")) or module_name.startswith(
            package + "."
        ):
            return
    allowed = ", ".join(prefixes) if prefixes else "none: it is empty"
    raise ValueError(
        f"module {module_name!r} is not allowed for custom code; {STEP_MODULES_ENV} lists the "
        f"module prefixes that are (now {allowed})"
    )


def resolve_callable(ref: str) -> Callable[..., Any]:
    """Import ``module:attribute`` and return it. Raises ValueError saying what is wrong.

    Every callable the config names (steps, comparators, aggregators) is called with two positional
    arguments, so that is checked here too.
    """
    module_name, _, attribute = ref.partition(":")
    check_module_allowed(module_name)
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # user code: any failure to import is this file's config error
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{ref!r} is not callable")
    try:
        inspect.signature(target).bind(None, None)
    except TypeError:
        raise ValueError(f"{ref!r} must accept two positional arguments") from None
    except ValueError:  # no signature to inspect (some builtins): let the call tell
        pass
    return target


def _importable(ref: str) -> str:
    resolve_callable(ref)
    return ref


CallableRef = Annotated[
    str,
    StringConstraints(pattern=CALLABLE_REF_PATTERN),
    AfterValidator(_importable),
    Field(description="Python callable as 'module:function', imported when the config loads."),
]


# --- steps --------------------------------------------------------------------------------------


class RecordsToV2(Config):
    """JSON records (an object or a list of objects) -> an Open Inference Protocol request with one
    tensor of shape [records, features], the features in the order given."""

    step: Literal["records_to_v2"]
    features: tuple[FieldName, ...] = Field(min_length=1, description="Feature order.")
    input_name: str = Field(default="input-0", min_length=1)
    datatype: Literal["FP64", "FP32", "INT64", "INT32"] = "FP64"
    outputs: tuple[str, ...] = Field(
        default=(), description="Outputs to request (e.g. predict_proba); default: the model's."
    )


class RecordsToCsv(Config):
    """JSON records -> CSV rows, for CSV-speaking endpoints (SageMaker XGBoost and friends)."""

    step: Literal["records_to_csv"]
    features: tuple[FieldName, ...] = Field(min_length=1, description="Column order.")
    header: bool = False
    content_type: str = "text/csv"


class CsvToJson(Config):
    """CSV text (a CSV-speaking model's answer) -> a list of rows; a one-column row is a value.
    Must come first: it reads the raw body."""

    step: Literal["csv_to_json"]
    header: bool = Field(default=False, description="First line names the columns: records.")


class V2ToJson(Config):
    """An Open Inference Protocol response -> plain JSON: ``values`` gives one output's rows
    (a one-element row is a value); ``records`` gives one object per row keyed by output name."""

    step: Literal["v2_to_json"]
    format: Literal["values", "records"] = "values"
    output: str | None = Field(default=None, description="Output to use; default: the first.")


class Select(Config):
    """Keep only these fields of each record (missing ones stay missing)."""

    step: Literal["select"]
    fields: tuple[FieldName, ...] = Field(min_length=1)


class Rename(Config):
    """Rename fields of each record: ``{old: new}``."""

    step: Literal["rename"]
    fields: dict[FieldName, FieldName] = Field(min_length=1)


class Defaults(Config):
    """Fill fields that are missing or null in each record."""

    step: Literal["defaults"]
    values: dict[FieldName, JsonValue] = Field(min_length=1)


class Inject(Config):
    """Set constant (per-tenant) fields in each record, overwriting what the caller sent."""

    step: Literal["inject"]
    values: dict[FieldName, JsonValue] = Field(min_length=1)


def _indexed(value: Any) -> Any:
    """A list of labels means index -> label."""
    return dict(enumerate(value)) if isinstance(value, list | tuple) else value


Labels = Annotated[
    dict[int, str],
    BeforeValidator(_indexed),
    Field(min_length=1, description="A list (index -> label) or a mapping {index: label}."),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                {
                    "type": "object",
                    "patternProperties": {"^-?[0-9]+$": {"type": "string"}},
                    "additionalProperties": False,
                    "minProperties": 1,
                },
            ]
        }
    ),
]


class LabelMap(Config):
    """Class index -> label, for every value (or ``field`` of each record)."""

    step: Literal["label_map"]
    labels: Labels
    field: FieldName | None = None
    unknown: Literal["error", "keep"] = "error"


class TopK(Config):
    """Scores per row -> the k best as ``{label, score}``, best first."""

    step: Literal["top_k"]
    k: int = Field(ge=1, le=1000)
    labels: tuple[str, ...] = Field(default=(), description="Index -> label; default: index.")
    field: FieldName | None = None


class Threshold(Config):
    """A number at or above ``threshold`` becomes ``above``, below it ``below``."""

    step: Literal["threshold"]
    threshold: float
    above: JsonValue = 1
    below: JsonValue = 0
    field: FieldName | None = None


class Round(Config):
    """Round every float (or ``field`` of each record) to ``digits`` decimals."""

    step: Literal["round"]
    digits: int = Field(ge=0, le=12)
    field: FieldName | None = None


class CustomStep(Config):
    """Your own function, ``(payload, context) -> payload``, plain or async. See
    ``router/processing/interface.py`` for the interface and ``examples/steps.py`` for examples."""

    step: Literal["custom"]
    function: CallableRef
    timeout_ms: TimeoutMs = Field(default=1000, description="Longer fails the request with 504.")
    cpu_heavy: bool = Field(default=False, description="Run in a worker thread, off the loop.")
    options: dict[str, JsonValue] = Field(
        default_factory=dict, description="Handed to the function as context.options."
    )

    @model_validator(mode="after")
    def _runnable(self) -> Self:
        if self.cpu_heavy and inspect.iscoroutinefunction(resolve_callable(self.function)):
            raise ValueError("cpu_heavy runs the function in a thread: give a plain function")
        return self


StepConfig = (
    RecordsToV2
    | RecordsToCsv
    | CsvToJson
    | V2ToJson
    | Select
    | Rename
    | Defaults
    | Inject
    | LabelMap
    | TopK
    | Threshold
    | Round
    | CustomStep
)
STEP_NAMES: tuple[str, ...] = (
    "records_to_v2",
    "records_to_csv",
    "csv_to_json",
    "v2_to_json",
    "select",
    "rename",
    "defaults",
    "inject",
    "label_map",
    "top_k",
    "threshold",
    "round",
    "custom",
)


def _untagged(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Report step errors at the fields the user typed.

    Pydantic puts the union's tag into the error location (``preprocess.0.custom.function``); the
    operator never typed ``custom`` there, so it is dropped, and an unknown or missing ``step`` is
    reported at ``preprocess.0.step``.
    """
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "step_type", "a step is a mapping with a 'step:' name, e.g. {step: round, digits: 2}"
        )
    try:
        return handler(value)
    except ValidationError as exc:
        details: list[InitErrorDetails] = []
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            kind, message = error["type"], error["msg"]
            if kind == "union_tag_invalid":
                loc, kind, tag = ("step",), "unknown_step", value.get("step")
                message = f"unknown step {tag!r} (known: {', '.join(STEP_NAMES)})"
            elif kind == "union_tag_not_found":
                loc, kind, message = ("step",), "missing", "Field required"
            elif loc and loc[0] in STEP_NAMES:
                loc = loc[1:]
            details.append(
                {"type": PydanticCustomError(kind, message), "loc": loc, "input": error["input"]}
            )
        raise ValidationError.from_exception_data(exc.title, details) from None


Step = Annotated[StepConfig, Field(discriminator="step"), WrapValidator(_untagged)]


def _in_order(steps: tuple[StepConfig, ...]) -> tuple[StepConfig, ...]:
    for index, step in enumerate(steps):
        if isinstance(step, CsvToJson) and index != 0:
            raise ValueError(f"step {index}: csv_to_json reads the raw body, so it must be first")
        if isinstance(step, RecordsToCsv) and index != len(steps) - 1:
            raise ValueError(f"step {index}: records_to_csv writes the body, so it must be last")
    return steps


Steps = Annotated[tuple[Step, ...], Field(max_length=MAX_STEPS), AfterValidator(_in_order)]


# --- shadow, fallback, ensemble, selection ------------------------------------------------------


class Shadow(Config):
    """Send a copy of ``percent`` of the successful requests to ``model`` after the caller has its
    answer, and compare: exactly, within ``tolerance``, or with your ``comparator``."""

    model: ModelRef
    percent: float = Field(gt=0, le=100)
    tolerance: float | None = Field(default=None, ge=0, description="Numbers agree within this.")
    comparator: CallableRef | None = Field(
        default=None, description="'module:function' (primary, shadow) -> bool, plain or async."
    )
    max_in_flight: int = Field(
        default=16, ge=1, le=10_000, description="Copies at once; more are dropped and counted."
    )
    timeout_ms: TimeoutMs | None = Field(default=None, description="Default: the tenant's.")

    @model_validator(mode="after")
    def _one_comparison(self) -> Self:
        if self.tolerance is not None and self.comparator is not None:
            raise ValueError("give 'tolerance' or 'comparator', not both")
        return self


FallbackReason = Literal["upstream_error", "upstream_timeout", "overloaded"]


class Fallback(Config):
    """Answer from ``model`` when the primary call fails with one of ``on``."""

    model: ModelRef
    on: tuple[FallbackReason, ...] = Field(
        default=("upstream_error", "upstream_timeout", "overloaded"), min_length=1
    )
    reserve_ms: int = Field(
        default=0, ge=0, le=600_000, description="Time kept from the primary for the fallback."
    )


class Ensemble(Config):
    """Call every model in parallel and aggregate: ``vote`` (majority per value, ties to the
    earliest model listed), ``mean``, ``first_success``, or ``custom`` (``function``)."""

    models: tuple[ModelRef, ...] = Field(min_length=2, max_length=16)
    aggregate: Literal["vote", "mean", "first_success", "custom"]
    function: CallableRef | None = Field(
        default=None, description="With aggregate: custom, (results, context) -> output."
    )
    min_success: int | None = Field(
        default=None, ge=1, description="Answers needed; default: every model (require all)."
    )
    output: str | None = Field(default=None, description="V2 output to aggregate; default first.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        duplicates = sorted({m for m in self.models if self.models.count(m) > 1})
        if duplicates:
            raise ValueError(f"duplicate ensemble models: {', '.join(duplicates)}")
        if (self.aggregate == "custom") != (self.function is not None):
            raise ValueError("'function' is required with aggregate: custom, and only then")
        if self.min_success is not None and self.min_success > len(self.models):
            raise ValueError(f"min_success {self.min_success} is more than the models given")
        return self

    @property
    def needed(self) -> int:
        if self.aggregate == "first_success":
            return 1
        return self.min_success or len(self.models)


class SelectModel(Config):
    """Pick the model from an input field (dotted path; every record must agree)."""

    field: str = Field(
        pattern=r"^[^.]+(\.[^.]+)*$", description="e.g. product_type or parameters.product_type"
    )
    models: dict[str, ModelRef] = Field(min_length=1, description="Field value -> model.")
    default: ModelRef | None = Field(
        default=None, description="When the value is missing or unknown; without it: 400."
    )
