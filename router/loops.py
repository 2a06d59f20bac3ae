"""Background loops that survive errors but never swallow their own cancellation.

redis-py (and other clients) can turn a CancelledError delivered mid-command into a connection
error; a loop that catches those must check whether it is being cancelled, or shutdown hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


def reraise_if_cancelling(exc: BaseException) -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, every_s: float = 0.1) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again those that swallowed it
    (a client's connect timeout can consume a CancelledError and carry on)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
