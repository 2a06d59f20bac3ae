"""What every endpoint kind's warmer offers: one pass, a watch loop, and its current status."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from dataclasses import dataclass

from preloader.progress import WarmFailure

# After this many failed loads in a row a model is reported, not waited for: it no longer holds back
# the warm flag or the sidecar's /ready (one tenant's typo must not keep a tier out of service). It is
# still retried, backing off.
GIVE_UP_AFTER = 3


@dataclass(frozen=True, slots=True)
class WarmStatus:
    endpoint: str
    warm: bool  # the whole warm set is warm on every instance
    reason: str  # why not (or what is warm), for /ready and logs
    models: int = 0  # warm-set models warm everywhere
    wanted: int = 0  # warm-set models
    instances: int = 0
    failures: tuple[WarmFailure, ...] = ()
    unreachable: tuple[str, ...] = ()  # instances that did not answer at the last check


class Warmer(abc.ABC):
    """Warms one endpoint. ``run`` watches until cancelled; ``warm_once`` is one complete pass."""

    name: str

    def __init__(self) -> None:
        self._wake = asyncio.Event()

    @abc.abstractmethod
    async def warm_once(self) -> WarmStatus:
        """Warm the whole warm set everywhere once; the status after it."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Warm, then keep it warm (scale-out, restarts, config changes) until cancelled."""

    @abc.abstractmethod
    def status(self) -> WarmStatus:
        """The state as last observed (no I/O)."""

    def poke(self) -> None:
        """Something changed (the config): look again now instead of at the next interval."""
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when poked."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._wake.wait()
        self._wake.clear()
