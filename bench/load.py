"""What a load run is asked to do and what it measured, whichever generator ran it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

UnitMode = Literal["none", "fixed", "new"]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    connections: int
    threads: int
    duration_s: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    unit_mode: UnitMode = "none"
    unit_id: str = "bench-unit"  # the fixed id, or the prefix of the per-request ids


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # non-2xx answers plus socket errors
