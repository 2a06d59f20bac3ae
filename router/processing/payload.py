"""What flows between steps: parsed JSON, or bytes already encoded (the body at the boundaries, CSV).

Bytes come in, bytes go out; a pipeline parses only when a step needs JSON and serialises once at
the end, with orjson.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import orjson

from router.processing.interface import Json

JSON_TYPE = "application/json"
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class Encoded:
    """A payload as bytes with its content type: the raw body, or a step's encoded output."""

    body: bytes
    content_type: str


Payload: TypeAlias = Json | Encoded


def dumps(value: Any) -> bytes:
    """Serialise a step's output (NumPy arrays included). Raises orjson.JSONEncodeError."""
    return orjson.dumps(value, option=_DUMP_OPTIONS)


def encode(payload: Payload) -> Encoded:
    if isinstance(payload, Encoded):
        return payload
    return Encoded(dumps(payload), JSON_TYPE)


class Step(abc.ABC):
    """One compiled step.

    Built-ins are ``inline``: pure, synchronous and cheap, called as ``apply(payload)``. Custom steps
    override ``run`` (they need the request's context and a deadline).
    """

    label: str
    inline: ClassVar[bool] = True
    accepts_encoded: ClassVar[bool] = False  # takes the raw bytes (csv_to_json)

    @abc.abstractmethod
    def apply(self, payload: Payload) -> Payload:
        """Return the new payload; raise StepRejected when the payload does not fit."""
