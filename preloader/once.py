"""``--once``: warm every endpoint's warm set everywhere, report, and say whether all of it is warm.

No lock is taken (a deploy job may run beside the cluster's preloader: both only load what the
index shows missing, so nothing is loaded twice). The warm map and flag are written as in watch
mode; with no watcher refreshing them they lapse after 30 s, which is the contract for a preloader
that is gone.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from preloader.engine import Preloader
from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress, Summary, WarmFailure
from preloader.resources import http_session, redis_client, sagemaker_clients
from preloader.settings import Settings
from preloader.warmer import WarmStatus
from tenancy.store import ConfigStore
from tenancy.text import plural


@dataclass(frozen=True, slots=True)
class OnceResult:
    statuses: tuple[WarmStatus, ...]
    seconds: float

    @property
    def failures(self) -> list[WarmFailure]:
        """Every problem, one per line to print; an endpoint that is not warm has at least one."""
        found: list[WarmFailure] = []
        for status in self.statuses:
            found.extend(status.failures)
            if not status.warm and not status.failures:
                found.append(WarmFailure(status.endpoint, "-", "-", status.reason))
        return found

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> list[str]:
        """What a person reads after a run that is not all warm: what is warm, what did not
        answer, and what to start."""
        lines: list[str] = []
        for status in self.statuses:
            if status.warm:
                lines.append(f"{status.endpoint}: warm ({status.reason})")
                continue
            lines.append(
                f"{status.endpoint}: {status.models} of {plural(status.wanted, 'model')} warm "
                f"on every reachable instance ({plural(status.instances, 'instance')} listed)"
            )
            if status.unreachable:
                lines.append(
                    f"{status.endpoint}: could not reach {', '.join(status.unreachable)}: start "
                    "the model server at each address (or correct the endpoint's instances in "
                    "endpoints.yaml), then run again; `make run` starts the example ones"
                )
        return lines

    def summary(self) -> Summary:
        return Summary(
            endpoint="*",
            models=sum(s.models for s in self.statuses),
            wanted=sum(s.wanted for s in self.statuses),
            instances=sum(s.instances for s in self.statuses),
            seconds=self.seconds,
            failures=len(self.failures),
        )


async def run_once(
    settings: Settings,
    *,
    progress: Progress | None = None,
    metrics: PreloaderMetrics | None = None,
) -> OnceResult:
    """What ``python -m preloader --once`` runs. Raises ConfigError for an invalid config."""
    progress = progress or Progress()
    started = time.monotonic()
    store = ConfigStore(settings.config_dir)
    store.load_initial()
    async with AsyncExitStack() as stack:
        preloader = Preloader(
            settings,
            store=store,
            session=await stack.enter_async_context(http_session()),
            redis=await stack.enter_async_context(redis_client(settings.redis_target)),
            sagemaker=await stack.enter_async_context(sagemaker_clients()),
            metrics=metrics or PreloaderMetrics(),
            progress=progress,
        )
        statuses = await preloader.warm_once()
    result = OnceResult(tuple(statuses), time.monotonic() - started)
    progress.summary(result.summary())
    return result
