"""What the router accepts from the caller's identifying headers (SPEC "Data plane", robustness rules).

aiohttp decodes header bytes as UTF-8 with ``surrogateescape``, so an invalid byte arrives as a lone
surrogate: ``isascii()`` rejects it for request ids, and a strict ``encode`` rejects it for unit ids.
Neither value is ever reflected raw, so no answer, log line or metric label can choke on it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping

from router.errors import InvalidRequest

MAX_REQUEST_ID = 128
MAX_UNIT_ID_BYTES = 256

_ID_PREFIX = os.urandom(6).hex()  # per process: ids stay unique across replicas
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A random per-process prefix and a counter: unique, and no system call per request."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def request_id_of(headers: Mapping[str, str], header: str = "X-Request-Id") -> str:
    """The caller's ``header`` when it is 1-128 printable ASCII characters, else a new id."""
    given = headers.get(header)
    if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return new_request_id()


def unit_id_of(headers: Mapping[str, str]) -> str | None:
    """The sticky key: None when absent or empty; 400 unless at most 256 bytes of UTF-8 text."""
    return checked_unit(headers.get("X-Unit-Id"), "X-Unit-Id")


def checked_unit(unit: str | None, source: str) -> str | None:
    """``unit`` (from ``source``, named in the error) under the rules of X-Unit-Id."""
    if not unit:
        return None
    try:
        size = len(unit.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{source} must be valid UTF-8 text") from exc
    if size > MAX_UNIT_ID_BYTES or not unit.isprintable():
        raise InvalidRequest(
            f"{source} must be at most {MAX_UNIT_ID_BYTES} bytes of printable UTF-8 text"
        )
    return unit
