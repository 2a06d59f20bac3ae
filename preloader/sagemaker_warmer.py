"""Warms a SageMaker multi-model endpoint by invoking its models.

A SageMaker MME loads a model on the instance that receives its first request and evicts the least
recently used one under memory pressure; nothing can be loaded explicitly. So:

- warm: invoke every warm-set model with its warm-up payload, ``copies`` times at once per model,
  ``copies`` being the instance count ``DescribeEndpoint`` reports, so that every instance is likely
  to receive one (SageMaker decides the routing; this is best effort by design);
- scale-out: poll ``DescribeEndpoint`` every ``describe_interval_s``; when the count grows, invoke the
  warm set again with the new count as concurrency per model;
- keep-warm: re-invoke every model every ``keep_warm_interval_s`` (set it below the eviction horizon),
  as many times as the endpoint has instances (each invocation refreshes one instance's LRU entry),
  starting at most ``keep_warm_max_rps`` invocations per second so keep-warm cannot overload the
  endpoint.

A model that fails to load ``GIVE_UP_AFTER`` times in a row is reported but no longer holds back the
warm flag; it is still retried, backing off.

A model whose warm-up payload the model rejects (a 4xx from the container) did load: it counts as
warm; the rejection is reported as a failure only when a sample was configured (without one the
preloader sends an empty body, which models are expected to refuse).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError

from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress, Summary, WarmFailure
from preloader.publish import WarmPublisher
from preloader.warm_set import WarmModel, WarmSet, WarmSets
from preloader.warmer import GIVE_UP_AFTER, Warmer, WarmStatus
from router.backends.base import UpstreamRequest
from router.backends.sagemaker import SageMakerBackend, SageMakerClients
from router.errors import InvalidRequest, RouterError
from router.loops import reraise_if_cancelling
from tenancy.models import SageMakerEndpoint
from tenancy.text import plural

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0


class Pacer:
    """Spaces the starts of invocations, shared by concurrent tasks, ``gap_s`` apart."""

    def __init__(self, gap_s: float, clock: Callable[[], float]) -> None:
        self.gap_s = gap_s
        self._clock = clock
        self._next = clock()

    async def wait(self) -> None:
        now = self._clock()
        at = max(now, self._next)
        self._next = at + self.gap_s
        if at > now:
            await asyncio.sleep(at - now)


class SageMakerWarmer(Warmer):
    def __init__(
        self,
        name: str,
        *,
        endpoint: Callable[[], SageMakerEndpoint | None],
        warm_sets: WarmSets,
        clients: SageMakerClients,
        publisher: WarmPublisher | None,
        metrics: PreloaderMetrics,
        progress: Progress,
        check_interval_s: float = 2.0,
        load_timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.name = name
        self._endpoint = endpoint
        self._warm_sets = warm_sets
        self._clients = clients
        self._publisher = publisher
        self._metrics = metrics
        self._progress = progress
        self._check_interval_s = check_interval_s
        self._load_timeout_s = load_timeout_s
        self._clock = clock
        self._backend: tuple[SageMakerEndpoint, SageMakerBackend] | None = None
        self.instance_count = 0
        self.warm: dict[str, bool] = {}  # model -> its last invocation loaded it
        self.failures: dict[str, WarmFailure] = {}
        self.attempts: dict[str, int] = {}  # model -> failed warm-ups in a row
        self.invocations = 0  # every warm-up and keep-warm invocation sent (observability)
        self.describe_error: str | None = None
        self._retry_at: dict[str, tuple[float, float]] = {}  # failed model -> (when, back-off)
        self._warm_set = WarmSet(name, ())
        self._started = self._clock()
        self._was_warm = False
        self._passed = False  # one full pass done: before it, nothing is known to be warm

    def _backend_for(self, endpoint: SageMakerEndpoint) -> SageMakerBackend:
        if self._backend is None or self._backend[0] != endpoint:
            backend = SageMakerBackend(
                self.name,
                endpoint_name=endpoint.endpoint_name or "",
                endpoint_names=endpoint.endpoint_names,
                region=endpoint.region,
                endpoint_url=endpoint.endpoint_url,
                control_endpoint_url=endpoint.control_endpoint_url,
                clients=self._clients,
                # The preloader is the one caller that is meant to wait for a load.
                attempt_timeout_s=self._load_timeout_s,
            )
            self._backend = (endpoint, backend)
        return self._backend[1]

    # -- invocations ---------------------------------------------------------------------------

    async def _invoke(
        self, backend: SageMakerBackend, model: WarmModel, pace: Pacer | None = None
    ) -> tuple[bool, str | None]:
        """One invocation (after ``pace`` allows it): (the model loaded, what went wrong)."""
        if pace is not None:
            await pace.wait()
        self.invocations += 1
        request = UpstreamRequest(
            model=model.name,
            body=model.sample if model.sample is not None else b"",
            content_type=model.content_type,
            request_id=f"preload-{uuid.uuid4().hex[:16]}",
        )
        try:
            await backend.invoke(request)
        except InvalidRequest as exc:
            # The container answered, so the model is loaded; an empty body is expected to fail.
            return (
                True,
                None if model.sample is None else f"warm-up payload rejected: {exc.message}",
            )
        except RouterError as exc:
            return False, exc.message
        return True, None

    async def _warm_model(
        self,
        backend: SageMakerBackend,
        model: WarmModel,
        copies: int,
        limit: asyncio.Semaphore,
        *,
        keep_warm: bool = False,
        pace: Pacer | None = None,
    ) -> None:
        async with limit:
            started = self._clock()
            results = await asyncio.gather(
                *(self._invoke(backend, model, pace) for _ in range(copies))
            )
            elapsed = self._clock() - started
        loaded = all(ok for ok, _ in results)
        problem = next((p for _, p in results if p is not None), None)
        self.warm[model.name] = loaded
        if loaded:
            self._retry_at.pop(model.name, None)
            self.attempts.pop(model.name, None)
        else:
            self.attempts[model.name] = self.attempts.get(model.name, 0) + 1
            previous = self._retry_at.get(model.name)
            backoff = self._check_interval_s if previous is None else previous[1] * 2
            backoff = min(backoff, MAX_BACKOFF_S)
            self._retry_at[model.name] = (self._clock() + backoff, backoff)
        if problem is None:
            self.failures.pop(model.name, None)
            if not keep_warm:  # a keep-warm round is routine: no line per model, no load timed
                self._metrics.warm_duration.labels(self.name).observe(elapsed)
                self._progress.warmed(
                    self.name, f"{backend.endpoint_name} x{copies}", model.name, elapsed
                )
            return
        failure = WarmFailure(self.name, backend.endpoint_name, model.name, problem)
        self.failures[model.name] = failure
        self._metrics.warm_failures.labels(self.name).inc()
        self._progress.failed(failure)
        if not loaded and self.attempts[model.name] == GIVE_UP_AFTER:
            self._progress.gave_up(failure, GIVE_UP_AFTER)

    async def warm_models(self, models: Sequence[WarmModel], *, copies: int) -> None:
        """Invoke each of ``models`` ``copies`` times at once, ``preload.concurrency`` models at once."""
        endpoint = self._endpoint()
        if endpoint is None or not models:
            return
        backend = self._backend_for(endpoint)
        limit = asyncio.Semaphore(endpoint.preload.concurrency)
        copies = max(copies, 1)
        await asyncio.gather(*(self._warm_model(backend, m, copies, limit) for m in models))

    async def keep_warm(self) -> None:
        """Re-invoke every warm-set model once per instance, paced to ``keep_warm_max_rps``."""
        endpoint = self._endpoint()
        if endpoint is None:
            return
        backend = self._backend_for(endpoint)
        pace = Pacer(1.0 / endpoint.preload.keep_warm_max_rps, self._clock)
        limit = asyncio.Semaphore(endpoint.preload.concurrency)
        copies = max(self.instance_count, 1)
        await asyncio.gather(
            *(
                self._warm_model(backend, m, copies, limit, keep_warm=True, pace=pace)
                for m in self._warm_set.models
            )
        )

    async def describe(self) -> int | None:
        """The endpoint's instance count, or None when DescribeEndpoint fails."""
        endpoint = self._endpoint()
        if endpoint is None:
            return None
        try:
            count = await self._backend_for(endpoint).instance_count()
        except (ClientError, BotoCoreError) as exc:
            self.describe_error = str(exc)
            log.warning("endpoint=%s DescribeEndpoint failed: %s", self.name, exc)
            return None
        self.describe_error = None
        return count

    # -- status --------------------------------------------------------------------------------

    def status(self) -> WarmStatus:
        wanted = self._warm_set.names
        not_loaded = sorted(m for m in wanted if not self.warm.get(m))
        given_up = {m for m in not_loaded if self.attempts.get(m, 0) >= GIVE_UP_AFTER}
        cold = [m for m in not_loaded if m not in given_up]
        failures = tuple(f for m, f in self.failures.items() if m in wanted)
        warm = self._passed and not cold
        if not warm:
            reason = f"not warm: {', '.join(cold) or 'not invoked yet'}"
        elif given_up:
            reason = (
                f"{len(wanted) - len(given_up)} of {plural(len(wanted), 'model')} warm on "
                f"{plural(self.instance_count, 'instance')}; not waited for (failed "
                f"{GIVE_UP_AFTER} times): {', '.join(sorted(given_up))}"
            )
        else:
            reason = (
                f"{plural(len(wanted), 'model')} warm on {plural(self.instance_count, 'instance')}"
            )
        return WarmStatus(
            endpoint=self.name,
            warm=warm,
            reason=reason,
            models=len(wanted) - len(not_loaded),
            wanted=len(wanted),
            instances=self.instance_count,
            failures=failures,
        )

    async def _publish(self) -> WarmStatus:
        status = self.status()
        self._metrics.models_warm.labels(self.name).set(status.models)
        self._metrics.instances.labels(self.name).set(status.instances)
        if self._publisher is not None:
            try:
                await self._publisher.publish(None, all_warm=status.warm)
            except (RedisError, OSError) as exc:
                reraise_if_cancelling(exc)
                self._publisher.failed(exc)
        if status.warm and not self._was_warm:
            self._progress.summary(
                Summary(
                    endpoint=self.name,
                    models=status.models,
                    wanted=status.wanted,
                    instances=status.instances,
                    seconds=self._clock() - self._started,
                    failures=len(status.failures),
                )
            )
        if not status.warm and self._was_warm:
            self._started = self._clock()
        self._was_warm = status.warm
        return status

    async def _refresh_warm_set(self) -> list[WarmModel]:
        """Re-read the warm set; the models in it to warm now: new ones (a new tenant, a new
        canary) and failed ones whose back-off has passed."""
        self._warm_set = await self._warm_sets.get(self.name)
        for model in [m for m in self.warm if m not in self._warm_set.names]:
            self.warm.pop(model, None)
            self.attempts.pop(model, None)
            self.failures.pop(model, None)
            self._retry_at.pop(model, None)
        now = self._clock()
        return [
            m
            for m in self._warm_set.models
            if m.name not in self.warm
            or (not self.warm[m.name] and self._retry_at.get(m.name, (0.0, 0.0))[0] <= now)
        ]

    # -- passes --------------------------------------------------------------------------------

    async def warm_once(self) -> WarmStatus:
        await self._refresh_warm_set()
        count = await self.describe()
        describe_failure: WarmFailure | None = None
        if count is None:
            config = self._endpoint()
            describe_failure = WarmFailure(
                self.name,
                ",".join(config.members()) if config is not None else self.name,
                "-",
                f"DescribeEndpoint failed: {self.describe_error}",
            )
            self._progress.failed(describe_failure)
        else:
            self.instance_count = count
        await self.warm_models(self._warm_set.models, copies=self.instance_count)
        self._passed = True
        status = await self._publish()
        if describe_failure is not None:
            status = replace(status, warm=False, failures=(*status.failures, describe_failure))
        return status

    async def run(self) -> None:
        try:
            await self.warm_once()
            endpoint = self._endpoint()
            now = self._clock()
            next_describe = now + (endpoint.describe_interval_s if endpoint else 30.0)
            next_keep = now + (endpoint.preload.keep_warm_interval_s if endpoint else 300.0)
            while True:
                endpoint = self._endpoint()
                if endpoint is None:
                    await self._pause(self._check_interval_s)
                    continue
                now = self._clock()
                wait = min(next_describe, next_keep, now + self._check_interval_s) - now
                await self._pause(wait)
                now = self._clock()
                fresh = await self._refresh_warm_set()
                if fresh:
                    await self.warm_models(fresh, copies=self.instance_count)
                if now >= next_describe:
                    next_describe = now + endpoint.describe_interval_s
                    await self._on_count(await self.describe())
                if now >= next_keep:
                    next_keep = now + endpoint.preload.keep_warm_interval_s
                    await self.keep_warm()
                await self._publish()
        finally:
            self._metrics.forget(self.name)

    async def _on_count(self, count: int | None) -> None:
        if count is None or count == self.instance_count:
            return
        previous, self.instance_count = self.instance_count, count
        if count > previous:
            self._progress.note(
                "scale-out endpoint=%s instances %d -> %d: warming again",
                self.name,
                previous,
                count,
            )
            await self.warm_models(self._warm_set.models, copies=count)
