"""What the preloader tells a person or a log pipeline.

On a terminal: one line per model as it warms (endpoint, instance, model, milliseconds), one per
failure, and a summary (models, instances, seconds, failures). Otherwise the same events as
structured log records (JSON lines, ``router.logs``), so nothing is printed twice.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger("preloader")


@dataclass(frozen=True, slots=True)
class WarmFailure:
    endpoint: str
    instance: str  # base URL (v2) or the SageMaker endpoint name; "-" when not per instance
    model: str  # "-" when the failure is not about one model (an unreachable instance)
    reason: str

    def line(self) -> str:
        return (
            f"FAILED endpoint={self.endpoint} instance={self.instance} model={self.model}: "
            f"{self.reason}"
        )


@dataclass(frozen=True, slots=True)
class Summary:
    endpoint: str  # one endpoint, or "*" for a whole ``--once`` run
    models: int  # warm-set models warm everywhere
    wanted: int  # warm-set models
    instances: int
    seconds: float
    failures: int

    def line(self) -> str:
        return (
            f"summary endpoint={self.endpoint} models={self.models}/{self.wanted} "
            f"instances={self.instances} seconds={self.seconds:.2f} failures={self.failures}"
        )


class Progress:
    """Reports warm-up events; ``tty`` picks human lines (on ``stream``) or log records."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def warmed(self, endpoint: str, instance: str, model: str, seconds: float) -> None:
        if self.tty:
            self._print(f"warm  {endpoint}  {instance}  {model}  {seconds * 1000:.0f} ms")
        else:
            log.info(
                "model warm endpoint=%s instance=%s model=%s ms=%.1f",
                endpoint,
                instance,
                model,
                seconds * 1000,
            )

    def failed(self, failure: WarmFailure) -> None:
        if self.tty:
            self._print(failure.line())
        else:
            log.warning(
                "warm failed endpoint=%s instance=%s model=%s reason=%s",
                failure.endpoint,
                failure.instance,
                failure.model,
                failure.reason,
            )

    def gave_up(self, failure: WarmFailure, attempts: int) -> None:
        """A model failed ``attempts`` loads in a row: reported, no longer waited for."""
        if self.tty:
            self._print(f"GAVE UP waiting after {attempts} attempts: {failure.line()}")
        else:
            log.warning(
                "warm given up endpoint=%s instance=%s model=%s attempts=%d reason=%s "
                "(still retried; no longer holds back readiness)",
                failure.endpoint,
                failure.instance,
                failure.model,
                attempts,
                failure.reason,
            )

    def summary(self, summary: Summary) -> None:
        if self.tty:
            self._print(summary.line())
        else:
            log.info("%s", summary.line())

    def note(self, message: str, *args: object) -> None:
        """A state change worth a line either way (leadership, scale-out)."""
        if self.tty:
            self._print(message % args if args else message)
        else:
            log.info(message, *args)
