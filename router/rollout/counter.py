"""The hot path's share of a rollout: a few list increments per request, no Redis, no allocation.

The controller swaps the rows out and flushes them to Redis in one script call per tick, so the
request path never waits on Redis for a rollout.
"""

from __future__ import annotations

from bisect import bisect_left

from router.rollout.figures import LATENCY_BOUNDS_S, ROW, field_names


class WindowCounter:
    """Counts of one tenant experiment since the last flush, by variant name."""

    __slots__ = ("_names", "_rows")

    def __init__(self, control: str, canary: str) -> None:
        self._names = {control: "control", canary: "canary"}
        self._rows = self._empty()

    def _empty(self) -> dict[str, list[int]]:
        return {name: [0] * ROW for name in self._names}

    def count(self, variant: str, status: int) -> None:
        row = self._rows.get(variant)
        if row is not None:
            row[0] += 1
            if status >= 500:
                row[1] += 1

    def observe(self, variant: str, seconds: float) -> None:
        row = self._rows.get(variant)
        if row is not None:
            row[2 + bisect_left(LATENCY_BOUNDS_S, seconds)] += 1

    def drain(self) -> list[str | int]:
        """Counts since the last drain as flat (field, count) pairs, only non-zero ones."""
        rows, self._rows = self._rows, self._empty()
        pairs: list[str | int] = []
        for name, row in rows.items():
            for field, count in zip(field_names(self._names[name]), row, strict=True):
                if count:
                    pairs += (field, count)
        return pairs
