"""One WARNING per upstream failure, rate-limited per (instance, kind).

A failing instance under load fails hundreds of requests a second; one line a second per instance and
kind, with the count of the lines held back since, keeps the cause visible without flooding the log.
Each line names what an operator needs to find the request on both sides: request id, tenant, model,
instance, status and the start of the upstream's body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("warmroute.upstream")

BODY_START = 200  # characters of the upstream body quoted in the line
INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class Failure:
    kind: str  # "http_5xx", "http_4xx", "timeout", "connection", "unreachable", ...
    endpoint: str
    instance: str
    request_id: str
    tenant: str
    model: str
    status: int | str  # the upstream HTTP status, or a short cause when there was none
    body: bytes | str = b""


def body_start(body: bytes | str, limit: int = BODY_START) -> str:
    """The first ``limit`` characters of ``body`` as one line of valid text."""
    text = body[: limit * 4].decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


class FailureLog:
    """Logs ``Failure``s, at most one line per ``interval_s`` per (instance, kind)."""

    def __init__(
        self,
        *,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._log = logger
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def warn(self, failure: Failure) -> bool:
        """Log ``failure`` unless a line of its kind for its instance was written lately.

        Returns whether a line was written.
        """
        key = (failure.instance, failure.kind)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._held.pop(key, 0)
        self._log.warning(
            "upstream failure kind=%s endpoint=%s instance=%s status=%s request_id=%s tenant=%s "
            "model=%s body=%r suppressed=%d",
            failure.kind,
            failure.endpoint,
            failure.instance,
            failure.status,
            failure.request_id,
            failure.tenant,
            failure.model,
            body_start(failure.body),
            suppressed,
        )
        return True
