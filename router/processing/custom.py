"""Custom steps: user functions named ``module:function``, plain, async or ``cpu_heavy`` (a worker
thread), each under its own timeout and the request's deadline."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from router.processing.interface import Stage, StepContext, StepRejected
from router.processing.payload import Payload, Step
from tenancy.processing import CustomStep as CustomStepConfig
from tenancy.processing import resolve_callable

log = logging.getLogger(__name__)


class StepTimedOut(Exception):
    """A step ran past its timeout or the request's deadline."""


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The request a pipeline runs for (what a StepContext is made of)."""

    tenant: str
    model: str
    variant: str
    request_id: str


def is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - async __call__ on an instance
    )


class CustomStep(Step):
    inline = False

    def __init__(self, config: CustomStepConfig, *, threads: Executor | None = None) -> None:
        """``threads`` runs cpu_heavy steps (default: the loop's default executor)."""
        self.label = config.function
        self.threads = threads
        self.function = resolve_callable(config.function)
        self.is_async = is_async(self.function)
        self.cpu_heavy = config.cpu_heavy
        self.timeout_ms = config.timeout_ms
        self.timeout_s = config.timeout_ms / 1000
        self.options = MappingProxyType(dict(config.options))

    def apply(self, payload: Payload) -> Payload:
        raise TypeError("a custom step runs with run(), not apply()")

    async def run(
        self, payload: Payload, request: RequestInfo, stage: Stage, index: int, deadline: float
    ) -> Payload:
        context = StepContext(
            request.tenant,
            request.model,
            request.variant,
            request.request_id,
            stage,
            index,
            self.options,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        limit = min(started + self.timeout_s, deadline)
        try:
            if self.cpu_heavy:
                work = functools.partial(self.function, payload, context)
                async with asyncio.timeout_at(limit):
                    result = await loop.run_in_executor(self.threads, work)
            elif self.is_async:
                async with asyncio.timeout_at(limit):
                    result = await self.function(payload, context)
            else:
                result = self.function(payload, context)
                if inspect.isawaitable(result):
                    async with asyncio.timeout_at(limit):
                        result = await result
                elif loop.time() > limit:
                    blocked_ms = (loop.time() - started) * 1000
                    log.warning(
                        "custom step blocked the event loop step=%s tenant=%s ms=%.1f "
                        "(mark it cpu_heavy: true)",
                        self.label,
                        request.tenant,
                        blocked_ms,
                    )
                    raise TimeoutError
        except TimeoutError:
            raise StepTimedOut(self._timeout_message(limit, deadline)) from None
        except StepRejected:
            raise
        except Exception as exc:  # user code: whatever it raises fails this step, never the router
            log.warning(
                "custom step failed step=%s tenant=%s request_id=%s",
                self.label,
                request.tenant,
                request.request_id,
                exc_info=True,
            )
            raise StepRejected(f"{type(exc).__name__}: {exc}") from exc
        produced: Payload = result
        return produced

    def _timeout_message(self, limit: float, deadline: float) -> str:
        if limit >= deadline:
            return "the request's timeout ran out in this step"
        return f"took longer than its {self.timeout_ms} ms timeout"
