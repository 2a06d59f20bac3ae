"""Warms every instance of a v2 (Open Inference Protocol) endpoint and publishes what is warm where.

Per instance, one check at a time: read the repository index; load the warm-set models that are
not READY (at most ``preload.concurrency`` at once, never past ``capacity.max_models`` models on
the instance), run one warm-up inference each where a sample is configured, and read the index
again. Only models the index then shows READY are published for that instance, so the router
(``InstancePicker``) never prefers an instance for a model before the model is loaded there.

The watch loop re-checks every instance each ``check_interval_s``: a new instance (scale-out) is
checked the moment it is seen, an instance that restarted empty shows its models missing and is
re-warmed, an instance that is gone or unreachable is dropped from the warm map.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson
from redis.exceptions import RedisError

from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress, Summary, WarmFailure
from preloader.publish import WarmPublisher
from preloader.warm_set import WarmModel, WarmSet, WarmSets
from preloader.warmer import GIVE_UP_AFTER, Warmer, WarmStatus
from router.backends.discovery import resolve_instances
from router.backends.v2 import V2Instance, upstream_message
from router.errors import RouterError
from router.loops import cancel_and_wait, reraise_if_cancelling
from tenancy.models import V2Endpoint
from tenancy.text import plural

log = logging.getLogger(__name__)

READY = "READY"
MAX_BACKOFF_S = 300.0
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, RouterError, orjson.JSONDecodeError)


def _log_crash(task: asyncio.Task[None], url: str) -> None:
    """A check that died of a bug: say so (the next tick starts a new one)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("check of %s failed", url, exc_info=exc)


@dataclass(slots=True)
class InstanceState:
    url: str
    ready: frozenset[str] = frozenset()  # models the index showed READY at the last check
    checked: bool = False  # at least one check finished
    error: str | None = None  # unreachable: why
    # model -> why it is not loaded (cleared once the index shows it READY)
    failures: dict[str, WarmFailure] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)  # model -> failed loads in a row
    # model -> (sample, failure): loaded, but the warm-up inference with this sample failed. Kept
    # while the model stays loaded with the same sample; the warm-up is not repeated (the sample is
    # configuration: fix it and the next load uses the new one).
    warmup_failures: dict[str, tuple[bytes | None, WarmFailure]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class V2Warmer(Warmer):
    def __init__(
        self,
        name: str,
        *,
        endpoint: Callable[[], V2Endpoint | None],
        warm_sets: WarmSets,
        session: aiohttp.ClientSession,
        publisher: WarmPublisher | None,
        metrics: PreloaderMetrics,
        progress: Progress,
        check_interval_s: float = 2.0,
        load_timeout_s: float = 120.0,
        urls: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``urls`` fixes the instances (sidecar mode); otherwise the endpoint's config decides."""
        super().__init__()
        self.name = name
        self._endpoint = endpoint
        self._warm_sets = warm_sets
        self._session = session
        self._publisher = publisher
        self._metrics = metrics
        self._progress = progress
        self._check_interval_s = check_interval_s
        self._load_timeout_s = load_timeout_s
        self._fixed = [u.rstrip("/") for u in urls] if urls is not None else None
        self._clock = clock
        self.states: dict[str, InstanceState] = {}
        self._instances: dict[str, tuple[int, V2Instance]] = {}  # url -> (timeout_ms, client)
        self._resolved: list[str] = []
        self._resolved_at: float | None = None
        self._retry_at: dict[tuple[str, str], tuple[float, float]] = {}  # -> (when, backoff)
        self._warm_set = WarmSet(name, ())
        self._cold_since: float | None = self._clock()
        self._failures_since = 0
        self._was_warm = False
        self._refreshed = False  # instances seen once: later ones are a scale-out
        for url in self._fixed or ():
            self.states[url] = InstanceState(url)

    # -- instances ---------------------------------------------------------------------------

    async def _urls(self, endpoint: V2Endpoint) -> list[str]:
        if self._fixed is not None:
            return self._fixed
        discovery = endpoint.discovery
        if discovery is None:
            return list(dict.fromkeys(u.rstrip("/") for u in endpoint.instances))
        now = self._clock()
        if self._resolved_at is None or now - self._resolved_at >= discovery.interval_s:
            try:
                self._resolved = await resolve_instances(discovery)
            except OSError as exc:  # socket.gaierror: keep the last known instances
                log.warning("endpoint=%s discovery failed: %s", self.name, exc)
            self._resolved_at = now
        return self._resolved

    def _instance(self, url: str, endpoint: V2Endpoint) -> V2Instance:
        known = self._instances.get(url)
        if known is not None and known[0] == endpoint.timeout_ms:
            return known[1]
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout_ms / 1000)
        instance = V2Instance(url, self._session, timeout=timeout)
        self._instances[url] = (endpoint.timeout_ms, instance)
        return instance

    # -- one instance --------------------------------------------------------------------------

    async def _ready_models(self, instance: V2Instance) -> frozenset[str]:
        index = await instance.index()
        return frozenset(m for m, state in index.items() if state == READY)

    async def check(self, state: InstanceState, endpoint: V2Endpoint, warm_set: WarmSet) -> None:
        """Bring one instance up to the warm set and record what is READY there."""
        instance = self._instance(state.url, endpoint)
        try:
            ready = await self._ready_models(instance)
        except TRANSPORT_ERRORS as exc:
            self._unreachable(state, exc)
            return
        if state.error is not None:
            self._progress.note("instance back endpoint=%s instance=%s", self.name, state.url)
            state.error = None
        lost = state.ready - ready
        state.ready, state.checked = ready, True
        if lost:
            # Restarted empty, or models evicted: stop vouching for them before re-warming.
            await self._publish()
        missing = [m for m in warm_set.models if m.name not in ready]
        capacity = endpoint.capacity.max_models
        room = len(missing) if capacity is None else max(0, capacity - len(ready))
        now = self._clock()
        for model in missing[room:]:
            if model.name not in state.failures:
                reason = f"instance at capacity: holds {plural(len(ready), 'model')}, max_models is {capacity}"
                state.failures[model.name] = WarmFailure(self.name, state.url, model.name, reason)
                self._progress.failed(state.failures[model.name])
        todo = [m for m in missing[:room] if self._due(state.url, m.name, now)]
        if todo:
            limit = asyncio.Semaphore(endpoint.preload.concurrency)
            await asyncio.gather(*(self._warm_model(instance, state, m, limit) for m in todo))
            try:
                ready = await self._ready_models(instance)
            except TRANSPORT_ERRORS as exc:
                self._unreachable(state, exc)
                return
            for model in todo:
                if model.name not in ready and model.name not in state.failures:
                    self._fail(state, model, "loaded, but the repository index does not say READY")
        samples = {m.name: m.sample for m in warm_set.models}
        for model_name in list(state.failures):
            if model_name in ready or model_name not in samples:
                del state.failures[model_name]
                state.attempts.pop(model_name, None)
        for model_name, (sample, _) in list(state.warmup_failures.items()):
            if model_name not in ready or samples.get(model_name, b"") != sample:
                del state.warmup_failures[model_name]
        state.ready = ready
        state.checked = True

    def _due(self, url: str, model: str, now: float) -> bool:
        retry = self._retry_at.get((url, model))
        return retry is None or retry[0] <= now

    async def _warm_model(
        self,
        instance: V2Instance,
        state: InstanceState,
        model: WarmModel,
        limit: asyncio.Semaphore,
    ) -> None:
        async with limit:
            started = self._clock()
            try:
                await instance.load(model.name, timeout_s=self._load_timeout_s)
            except TRANSPORT_ERRORS as exc:
                self._fail(state, model, f"load failed: {exc}")
                return
            state.failures.pop(model.name, None)
            state.attempts.pop(model.name, None)
            self._retry_at.pop((state.url, model.name), None)
            state.warmup_failures.pop(model.name, None)
            reason = await self._warm_up(instance, model)
            if reason is not None:
                failure = self._fail(state, model, reason, retry=False)
                state.warmup_failures[model.name] = (model.sample, failure)
                return
            elapsed = self._clock() - started
            self._metrics.warm_duration.labels(self.name).observe(elapsed)
            self._progress.warmed(self.name, state.url, model.name, elapsed)

    async def _warm_up(self, instance: V2Instance, model: WarmModel) -> str | None:
        """One inference with the model's sample; why it failed, or None."""
        if model.sample is None:
            return None
        headers = {
            "Content-Type": model.content_type,
            "X-Request-Id": f"preload-{uuid.uuid4().hex[:16]}",
        }
        try:
            status, body, _ = await instance.infer(model.name, model.sample, headers)
        except TRANSPORT_ERRORS as exc:
            return f"warm-up inference failed: {exc!r}"
        if status != 200:
            return f"warm-up inference answered HTTP {status}: {upstream_message(body)}"
        return None

    def _fail(
        self, state: InstanceState, model: WarmModel, reason: str, *, retry: bool = True
    ) -> WarmFailure:
        failure = WarmFailure(self.name, state.url, model.name, reason)
        self._failures_since += 1
        self._metrics.warm_failures.labels(self.name).inc()
        self._progress.failed(failure)
        if retry:
            # Not loaded: try again later, backing off (a missing model must not spam the logs).
            state.failures[model.name] = failure
            attempts = state.attempts[model.name] = state.attempts.get(model.name, 0) + 1
            if attempts == GIVE_UP_AFTER:
                self._progress.gave_up(failure, attempts)
            key = (state.url, model.name)
            previous = self._retry_at.get(key)
            backoff = self._check_interval_s if previous is None else previous[1] * 2
            backoff = min(backoff, MAX_BACKOFF_S)
            self._retry_at[key] = (self._clock() + backoff, backoff)
        return failure

    def _unreachable(self, state: InstanceState, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        if state.error is None:
            self._progress.note(
                "instance unreachable endpoint=%s instance=%s: %s", self.name, state.url, reason
            )
        state.error = reason
        state.ready = frozenset()
        state.checked = True

    # -- the endpoint ------------------------------------------------------------------------

    @staticmethod
    def given_up(state: InstanceState) -> set[str]:
        """Models that failed to load ``GIVE_UP_AFTER`` times in a row there: not waited for."""
        return {m for m, n in state.attempts.items() if n >= GIVE_UP_AFTER and m in state.failures}

    def status(self) -> WarmStatus:
        wanted = self._warm_set.names
        states = list(self.states.values())
        abandoned: list[str] = []
        reachable = [s for s in states if s.error is None]
        # Warm everywhere that answers; nothing is warm when no instance answers at all.
        everywhere = set(wanted) if reachable else set()
        for state in reachable:
            everywhere &= state.ready
        failures: list[WarmFailure] = []
        reasons: list[str] = []
        for state in states:
            if state.error is not None:
                failures.append(
                    WarmFailure(self.name, state.url, "-", f"unreachable: {state.error}")
                )
                reasons.append(f"{state.url} unreachable")
            elif not state.checked:
                reasons.append(f"{state.url} not checked yet")
            else:
                failures.extend(state.failures.values())
                failures.extend(f for _, f in state.warmup_failures.values())
                given_up = self.given_up(state) & wanted
                abandoned.extend(f"{m} on {state.url}" for m in sorted(given_up))
                lacking = sorted(wanted - state.ready - given_up)
                if lacking:
                    reasons.append(f"{state.url} lacks {', '.join(lacking)}")
        if not states:
            reasons.append("no instances" if self._refreshed else "instances not listed yet")
        warm = not reasons
        if warm:
            reason = f"{plural(len(wanted), 'model')} warm on {plural(len(states), 'instance')}"
            if abandoned:
                reason = (
                    f"{len(everywhere)} of {plural(len(wanted), 'model')} warm on "
                    f"{plural(len(states), 'instance')}; not waited for (failed {GIVE_UP_AFTER} "
                    f"times): {', '.join(abandoned)}"
                )
        else:
            reason = "; ".join(reasons)
        return WarmStatus(
            endpoint=self.name,
            warm=warm,
            reason=reason,
            models=len(everywhere),
            wanted=len(wanted),
            instances=len(states),
            failures=tuple(failures),
            unreachable=tuple(s.url for s in states if s.error is not None),
        )

    async def _publish(self) -> WarmStatus:
        status = self.status()
        self._metrics.models_warm.labels(self.name).set(status.models)
        self._metrics.instances.labels(self.name).set(status.instances)
        if self._publisher is not None:
            entries = {
                s.url: s.ready for s in self.states.values() if s.checked and s.error is None
            }
            pending = [s.url for s in self.states.values() if not s.checked]
            flag = True if status.warm else (None if pending else False)
            try:
                await self._publisher.publish(entries, all_warm=flag, keep=pending)
            except (RedisError, OSError) as exc:
                reraise_if_cancelling(exc)
                self._publisher.failed(exc)
        if status.warm and not self._was_warm and self._cold_since is not None:
            self._progress.summary(
                Summary(
                    endpoint=self.name,
                    models=status.models,
                    wanted=status.wanted,
                    instances=status.instances,
                    seconds=self._clock() - self._cold_since,
                    failures=self._failures_since,
                )
            )
            self._cold_since = None
        elif not status.warm and self._was_warm:
            self._cold_since = self._clock()
            self._failures_since = 0
        self._was_warm = status.warm
        return status

    async def _refresh(self) -> tuple[V2Endpoint, list[str]] | None:
        endpoint = self._endpoint()
        if endpoint is None:
            return None
        self._warm_set = await self._warm_sets.get(self.name)
        urls = await self._urls(endpoint)
        for url in [u for u in self.states if u not in urls]:
            state = self.states.pop(url)
            self._instances.pop(url, None)
            self._retry_at = {k: v for k, v in self._retry_at.items() if k[0] != url}
            if state.task is not None:
                state.task.cancel()
                await asyncio.gather(state.task, return_exceptions=True)
            self._progress.note("instance gone endpoint=%s instance=%s", self.name, url)
        for url in urls:
            if url not in self.states:
                if self._refreshed:
                    self._progress.note("instance new endpoint=%s instance=%s", self.name, url)
                self.states[url] = InstanceState(url)
        self._refreshed = True
        return endpoint, urls

    async def warm_once(self) -> WarmStatus:
        refreshed = await self._refresh()
        if refreshed is not None:
            endpoint, _ = refreshed
            warm_set = self._warm_set
            states = list(self.states.values())
            await asyncio.gather(*(self.check(s, endpoint, warm_set) for s in states))
        return await self._publish()

    async def _check_and_publish(
        self, state: InstanceState, endpoint: V2Endpoint, warm_set: WarmSet
    ) -> None:
        await self.check(state, endpoint, warm_set)
        if self.states.get(state.url) is state:
            await self._publish()

    async def run(self) -> None:
        try:
            while True:
                refreshed = await self._refresh()
                if refreshed is not None:
                    endpoint, _ = refreshed
                    for state in self.states.values():
                        task = state.task
                        if task is not None and task.done():
                            _log_crash(task, state.url)
                        if task is None or task.done():
                            state.task = asyncio.create_task(
                                self._check_and_publish(state, endpoint, self._warm_set),
                                name=f"check {state.url}",
                            )
                    await self._publish()
                interval = self._check_interval_s
                if refreshed is not None and refreshed[0].discovery is not None:
                    interval = min(interval, refreshed[0].discovery.interval_s)
                await self._pause(interval)
        finally:
            tasks = [s.task for s in self.states.values() if s.task is not None]
            await cancel_and_wait(tasks)
            self._metrics.forget(self.name)
