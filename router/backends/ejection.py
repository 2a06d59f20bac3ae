"""Passive health: an instance that fails several times in a row is left out for a while.

Only failures that say nothing about the request (the connection failed, the instance did not answer
in time) count; an answer, even an error, resets the count. At most half the instances are ever
ejected, so a fleet-wide fault (or a bad model everywhere) cannot empty an endpoint. Once its time is
up an ejected instance gets traffic again; its count is not reset, so one more failure ejects it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

FAILURES_TO_EJECT = 5
EJECT_FOR_S = 10.0


class Ejectable(Protocol):
    failures: int
    ejected_until: float


class Ejector:
    def __init__(
        self, *, failures_to_eject: int = FAILURES_TO_EJECT, eject_for_s: float = EJECT_FOR_S
    ) -> None:
        self.failures_to_eject = failures_to_eject
        self.eject_for_s = eject_for_s

    def succeeded(self, instance: Ejectable) -> None:
        if instance.failures:
            instance.failures = 0

    def failed(self, instance: Ejectable, fleet: Sequence[Ejectable], now: float) -> bool:
        """Count a failure of ``instance``; True when this ejected it."""
        instance.failures += 1
        if instance.failures < self.failures_to_eject or instance.ejected_until > now:
            return False
        ejected = sum(1 for i in fleet if i.ejected_until > now)
        if ejected + 1 > len(fleet) // 2:
            return False
        instance.ejected_until = now + self.eject_for_s
        return True
