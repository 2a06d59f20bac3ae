"""The interface every endpoint kind implements."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    model: str
    body: bytes
    content_type: str
    request_id: str
    accept: str | None = None
    custom_attributes: str | None = None
    # time.monotonic() by which the whole request must be answered (the tenant's timeout); each
    # attempt gets min(the endpoint's attempt timeout, what is left). One timer per attempt.
    deadline: float | None = None
    tenant: str = ""  # for the upstream failure log


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    body: bytes
    content_type: str
    cold_start: bool = False  # this request waited for its model to load
    instance: str = ""  # which instance answered (v2), for logs and tests
    custom_attributes: str | None = None  # SageMaker: what the model returned in that header
    variant: str | None = None  # SageMaker: the production variant that answered


def attempt_budget(attempt_timeout_s: float, deadline: float | None) -> float:
    """Seconds the next attempt may take: the attempt timeout, cut to the request's deadline."""
    if deadline is None:
        return attempt_timeout_s
    return min(attempt_timeout_s, deadline - time.monotonic())


class Backend(abc.ABC):
    """One multi-model endpoint. Raises ``router.errors`` subclasses; never a transport exception."""

    name: str
    kind: str
    attempt_timeout_s: float
    # Called with the model of every request (the router's recent-traffic counters).
    on_request: Callable[[str], None] | None = None

    @abc.abstractmethod
    async def invoke(self, request: UpstreamRequest) -> UpstreamResponse:
        """Run one inference on ``request.model``; the caller bounds the total time."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the admin API shows about this endpoint."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work owned by this backend (discovery loops); needs a running loop."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Stop background work owned by this backend."""
