"""The figures a step is judged on: per-variant requests, 5xx-class answers and a fixed latency
histogram of router-measured upstream time. Fixed buckets let every replica's counts be summed in
Redis with HINCRBY, and p95 read back from the sum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ROLES = ("control", "canary")

# Upper bounds (seconds) of the latency buckets; one more bucket catches everything slower.
LATENCY_BOUNDS_S = (
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
BUCKETS = len(LATENCY_BOUNDS_S) + 1
# A row of counts: [requests, errors, bucket 0 .. bucket BUCKETS-1].
ROW = 2 + BUCKETS


@dataclass(frozen=True, slots=True)
class VariantFigures:
    requests: int = 0
    errors: int = 0
    latency: tuple[int, ...] = (0,) * BUCKETS

    @classmethod
    def from_row(cls, row: Sequence[int]) -> VariantFigures:
        return cls(row[0], row[1], tuple(row[2:ROW]))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def timed(self) -> int:
        return sum(self.latency)

    def p95_s(self) -> float | None:
        """95th percentile, interpolated inside its bucket; None without a timed request."""
        total = self.timed
        if total == 0:
            return None
        rank = 0.95 * total
        seen = 0
        for index, count in enumerate(self.latency):
            if count and seen + count >= rank:
                low = LATENCY_BOUNDS_S[index - 1] if index else 0.0
                if index == len(LATENCY_BOUNDS_S):
                    return low  # slower than the last bound: the bound is all we know
                high = LATENCY_BOUNDS_S[index]
                return low + (high - low) * (rank - seen) / count
            seen += count
        return LATENCY_BOUNDS_S[-1]

    def describe(self) -> dict[str, float | int | None]:
        p95 = self.p95_s()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p95_ms": None if p95 is None else round(p95 * 1000, 2),
        }


@dataclass(frozen=True, slots=True)
class Window:
    """Both variants' figures since the current step began, summed over replicas."""

    control: VariantFigures = VariantFigures()
    canary: VariantFigures = VariantFigures()

    @classmethod
    def from_fields(cls, fields: Mapping[str, int]) -> Window:
        """From the Redis hash: ``<role>:<column>`` -> count (see ``field_names``)."""
        rows = {role: [fields.get(name, 0) for name in field_names(role)] for role in ROLES}
        return cls(
            VariantFigures.from_row(rows["control"]), VariantFigures.from_row(rows["canary"])
        )

    def describe(self) -> dict[str, dict[str, float | int | None]]:
        return {"control": self.control.describe(), "canary": self.canary.describe()}


def field_names(role: str) -> tuple[str, ...]:
    return (f"{role}:n", f"{role}:e", *(f"{role}:b{i}" for i in range(BUCKETS)))
