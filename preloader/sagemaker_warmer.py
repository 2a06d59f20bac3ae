"""Warms a SageMaker multi-model endpoint by invoking its models.

A SageMaker MME loads a model on the instance that receives its first request and evicts the least
recently used one under memory pressure; nothing can be loaded explicitly. So:

- warm: invoke every warm-set model with its warm-up payload, ``copies`` times at once per model,
  ``copies`` being the instance count ``DescribeEndpoint`` reports, so that every instance is likely
  to receive one (SageMaker decides the routing; this is best effort by design);
- scale-out: poll ``DescribeEndpoint`` every ``describe_interval_s``; when the count grows, invoke the
  warm set again with the new count as concurrency per model;
- keep-warm: re-invoke every model every ``keep_warm_interval_s`` (set it below the eviction horizon),
  starting at most ``keep_warm_max_rps`` invocations per second so keep-warm cannot overload the
  endpoint.

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
from preloader.warmer import Warmer, WarmStatus
from router.backends.base import UpstreamRequest
from router.backends.sagemaker import SageMakerBackend, SageMakerClients
from router.errors import InvalidRequest, RouterError
from router.loops import cancel_and_wait, reraise_if_cancelling
from tenancy.models import SageMakerEndpoint
from tenancy.text import plural

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0


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
                endpoint_name=endpoint.endpoint_name,
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

    async def _invoke(self, backend: SageMakerBackend, model: WarmModel) -> tuple[bool, str | None]:
        """One invocation: (the model loaded, what went wrong)."""
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
    ) -> None:
        async with limit:
            started = self._clock()
            results = await asyncio.gather(*(self._invoke(backend, model) for _ in range(copies)))
            elapsed = self._clock() - started
        loaded = all(ok for ok, _ in results)
        problem = next((p for _, p in results if p is not None), None)
        self.warm[model.name] = loaded
        if loaded:
            self._retry_at.pop(model.name, None)
        else:
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
        """Re-invoke every warm-set model once, paced to ``keep_warm_max_rps``."""
        endpoint = self._endpoint()
        if endpoint is None:
            return
        backend = self._backend_for(endpoint)
        gap_s = 1.0 / endpoint.preload.keep_warm_max_rps
        limit = asyncio.Semaphore(endpoint.preload.concurrency)
        tasks: list[asyncio.Task[None]] = []
        try:
            for i, model in enumerate(self._warm_set.models):
                if i:
                    await asyncio.sleep(gap_s)
                tasks.append(
                    asyncio.create_task(self._warm_model(backend, model, 1, limit, keep_warm=True))
                )
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(tasks)

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
        cold = sorted(m for m in wanted if not self.warm.get(m))
        failures = tuple(f for m, f in self.failures.items() if m in wanted)
        warm = self._passed and not cold
        reason = (
            f"{plural(len(wanted), 'model')} warm on {plural(self.instance_count, 'instance')}"
            if warm
            else f"not warm: {', '.join(cold) or 'not invoked yet'}"
        )
        return WarmStatus(
            endpoint=self.name,
            warm=warm,
            reason=reason,
            models=len(wanted) - len(cold),
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
                log.warning("endpoint=%s cannot publish the warm flag: %r", self.name, exc)
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
                config.endpoint_name if config is not None else self.name,
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
