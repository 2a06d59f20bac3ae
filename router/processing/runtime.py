"""What processing keeps for the life of the process, across config snapshots: the shadow runner and
the worker threads of ``cpu_heavy`` steps. Owned by ``BackendFactory`` (shadow copies are background
calls to its backends) and closed first in its ``aclose()``.

``cpu_heavy`` steps get a pool of their own rather than the loop's default executor, which also
resolves DNS and reads config files: a step that hangs past its timeout keeps its thread, and it
should not be able to take those away from the rest of the router.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from router.metrics import RouterMetrics
from router.processing.shadow import ShadowRunner

DEFAULT_STEP_THREADS = 4


class ProcessingRuntime:
    def __init__(self, metrics: RouterMetrics, *, step_threads: int = DEFAULT_STEP_THREADS) -> None:
        self.metrics = metrics
        self.shadows = ShadowRunner(metrics)
        self.step_threads = ThreadPoolExecutor(
            max_workers=step_threads, thread_name_prefix="warmroute-step"
        )

    async def aclose(self) -> None:
        """Cancel running shadow copies; let running steps' threads end on their own."""
        await self.shadows.aclose()
        self.step_threads.shutdown(wait=False, cancel_futures=True)
