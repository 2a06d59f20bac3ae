"""The interface custom code implements: steps, shadow comparators and ensemble aggregators.

A **step** is a function named in a tenant file as ``module:function``::

    postprocess:
      - {step: custom, function: "examples.steps:add_confidence_band", timeout_ms: 50,
         options: {low: 0.5}}

It is called with the payload and a :class:`StepContext` and returns the new payload::

    def add_confidence_band(payload: Json, context: StepContext) -> Json: ...
    async def lookup_features(payload: Json, context: StepContext) -> Json: ...

- The payload is parsed JSON (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``);
  return parsed JSON too (NumPy arrays are fine: the router serialises with orjson). Mutating the
  payload in place and returning it is allowed: each request has its own copy.
- Plain functions run on the event loop and must be quick (microseconds); mark a step that does real
  CPU work ``cpu_heavy: true`` and it runs in a worker thread instead. ``async`` functions run on the
  loop and may await I/O.
- ``timeout_ms`` bounds a step (the request's own timeout bounds it too): an async or ``cpu_heavy`` step
  is abandoned when it expires; a plain function cannot be interrupted, so one that overran is failed
  afterwards. Either way the caller gets 504 ``upstream_timeout`` naming the step.
- Raise :class:`StepRejected` to refuse the payload: in preprocess the caller gets 400
  ``invalid_request`` naming the step and your message; in postprocess 502 ``upstream_error``. Any other
  exception is treated the same way (its type and message are passed on, the traceback is logged).

A **comparator** (``shadow.comparator``) is ``(primary, shadow) -> bool``, plain or async, given both
models' parsed answers. An **aggregator** (``ensemble: {aggregate: custom, function: ...}``) is
``(results, context) -> output``, plain or async, given a :class:`MemberResult` per model that answered
(in the order the ensemble lists them) and an :class:`AggregateContext`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from pydantic import JsonValue

Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | float | bool | None
Stage = Literal["preprocess", "postprocess"]


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step knows about the request it runs for."""

    tenant: str
    model: str  # the model the request goes to (or, in postprocess, came from)
    variant: str  # X-Variant: the experiment's variant, "default", "fallback", "ensemble"
    request_id: str
    stage: Stage
    index: int  # the step's position in its list
    options: Mapping[str, JsonValue]  # the step's ``options:`` from the tenant file


class StepRejected(Exception):
    """The payload is not acceptable to this step; the message goes to the caller."""


class StepFunction(Protocol):
    """A custom step: plain or async."""

    def __call__(self, payload: Json, context: StepContext, /) -> Json | Awaitable[Json]: ...


@dataclass(frozen=True, slots=True)
class MemberResult:
    """One ensemble member's answer."""

    model: str
    output: Json  # the model's parsed answer (a V2 response on v2 endpoints)


@dataclass(frozen=True, slots=True)
class AggregateContext:
    tenant: str
    request_id: str
    models: tuple[str, ...]  # every member, answered or not


class Aggregator(Protocol):
    """A custom ensemble aggregator: plain or async."""

    def __call__(
        self, results: Sequence[MemberResult], context: AggregateContext, /
    ) -> Json | Awaitable[Json]: ...


class Comparator(Protocol):
    """A custom shadow comparator: do the two answers agree? Plain or async."""

    def __call__(self, primary: Json, shadow: Json, /) -> bool | Awaitable[bool]: ...
