"""``experiment.rollout``: a canary that steps its own weight up and rolls itself back (SPEC.md
"Progressive rollout"). Only the config lives here; the router's ``router/rollout/`` runs it."""

from __future__ import annotations

import hashlib
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Rollout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: tuple[float, ...] = Field(
        min_length=1,
        description="Canary weight (percent, 1-100) at each step, strictly increasing.",
    )
    step_s: float = Field(gt=0, le=7 * 24 * 3600, description="At least this long at each step.")
    min_requests: int = Field(
        default=100, ge=1, description="Canary requests a step needs before it is judged."
    )
    max_error_rate_increase: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Canary's share of 5xx-class answers minus control's (0.01: one point).",
    )
    max_latency_ratio: float = Field(
        default=1.5,
        gt=0,
        description="Canary p95 over control p95 of the router-measured upstream time.",
    )
    on_failure: Literal["rollback", "pause"] = Field(
        default="rollback",
        description="rollback: canary weight 0 (every unit to control); pause: hold the weight.",
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        for step in steps:
            if not 1 <= step <= 100:
                raise ValueError(f"each step is a canary weight within 1-100, not {step:g}")
        for before, after in pairwise(steps):
            if after <= before:
                raise ValueError(f"steps must be strictly increasing ({after:g} after {before:g})")
        return steps


def fingerprint(rollout: Rollout, salt: str, models: tuple[str, ...]) -> str:
    """Identifies one rollout: a changed block, salt or variant model starts it over."""
    text = f"{rollout.model_dump_json()}\x1f{salt}\x1f{'/'.join(models)}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
