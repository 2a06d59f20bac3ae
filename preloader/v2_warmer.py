"""Warms every instance of a v2 (Open Inference Protocol) endpoint and publishes what is warm where.

Each pass computes the endpoint's placement (``router.placement``: which instances hold which
warm-set model) from the warm set, its recent traffic and the instances seen. Per instance, one check
at a time: read the repository index; unload what the placement no longer wants there
(``preloader.instance_plan``: moved copies once their new holders are ready, idle on-demand models,
others for room); load the models placed there that are not READY (at most
``preload.concurrency`` at once, never past ``capacity.max_models`` models on the instance), run one
warm-up inference each where a sample is configured, and read the index again. Only models the
index then shows READY (and not being retired) are published for that instance, so the router
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

from preloader.instance_plan import InstanceView, Plan, plan
from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress, Summary, WarmFailure
from preloader.publish import WarmPublisher
from preloader.warm_set import WarmModel, WarmSet, WarmSets
from preloader.warmer import GIVE_UP_AFTER, Warmer, WarmStatus
from router.backends.discovery import resolve_instances
from router.backends.v2 import V2Instance, upstream_message
from router.errors import RouterError
from router.loops import cancel_and_wait, reraise_if_cancelling
from router.placement import ModelDemand, Placement, place
from tenancy.models import PlacementPolicy, V2Endpoint
from tenancy.text import plural

log = logging.getLogger(__name__)

READY = "READY"
# A retired copy is unloaded this long after it left the warm map: longer than the routers take to
# re-read the map (1 s), so none still sends it a request there.
RETIRE_GRACE_S = 3.0
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
    ours: set[str] = field(default_factory=set)  # placed here by this preloader (moves are ours)
    retiring: dict[str, float] = field(default_factory=dict)  # model -> unpublished since
    seen: dict[str, float] = field(default_factory=dict)  # model -> first seen READY here

    @property
    def published(self) -> frozenset[str]:
        return self.ready - self.retiring.keys() if self.retiring else self.ready


# A sidecar knows only its own instance: it loads the warm set there, as much as fits.
SIDECAR_POLICY = PlacementPolicy(mode="replicate", headroom=0.0)


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
        self.placement = Placement("spread", {}, ())
        self._listed: list[str] = []  # the instances as last listed (config or discovery)
        self._active: frozenset[str] | None = None  # models with recent traffic; None: unknown
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
            # It holds its share again: place now rather than at the next pass.
            self.placement = self._place(endpoint, self._up(self._listed))
        lost = state.ready - ready
        state.ready, state.checked = ready, True
        if lost:
            # Restarted empty, or models evicted: stop vouching for them before re-warming.
            await self._publish()
        now = self._clock()
        steps = self._plan(state, endpoint, now)
        if steps.retire:
            state.retiring.update(dict.fromkeys(steps.retire, now))
            await self._publish()
        if steps.unload:
            ready = await self._unload(instance, state, steps, now)
            if state.error is not None:
                return
        by_name = {m.name: m for m in (*warm_set.models, *warm_set.over_capacity)}
        capacity = endpoint.capacity.max_models
        for name in steps.short:
            if name not in state.failures and name in by_name:
                reason = f"instance at capacity: holds {plural(len(ready), 'model')}, max_models is {capacity}"
                state.failures[name] = WarmFailure(self.name, state.url, name, reason)
                self._progress.failed(state.failures[name])
        todo = [by_name[n] for n in steps.load if n in by_name and self._due(state.url, n, now)]
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
        samples = {m.name: m.sample for m in (*warm_set.models, *warm_set.over_capacity)}
        placed_here = self.placement.models_on(state.url)
        state.ours = set(placed_here) | (state.ours & ready)
        for model_name in list(state.failures):
            if model_name in ready or model_name not in placed_here:
                del state.failures[model_name]
                state.attempts.pop(model_name, None)
        for model_name, (sample, _) in list(state.warmup_failures.items()):
            if model_name not in ready or samples.get(model_name, b"") != sample:
                del state.warmup_failures[model_name]
        state.ready = ready
        state.checked = True
        now = self._clock()
        for model_name in ready:
            state.seen.setdefault(model_name, now)
        for model_name in list(state.seen):
            if model_name not in ready:
                del state.seen[model_name]
        for model_name in list(state.retiring):
            if model_name not in ready or model_name in placed_here:
                del state.retiring[model_name]

    def _plan(self, state: InstanceState, endpoint: V2Endpoint, now: float) -> Plan:
        placement = self.placement

        def moved(model: str) -> bool | None:
            """None: not placed on another instance; else whether every new holder has it."""
            holders = [h for h in placement.holders.get(model, ()) if h != state.url]
            if not holders:
                return None
            return all(
                (other := self.states.get(h)) is not None and model in other.ready for h in holders
            )

        view = InstanceView(
            ready=state.ready,
            placed=[m for m in placement.holders if state.url in placement.holders[m]],
            ours=state.ours,
            retiring=state.retiring,
            seen=state.seen,
        )
        return plan(
            view,
            now=now,
            capacity=endpoint.capacity.max_models,
            moved=moved,
            active=self._active,
            idle_s=endpoint.placement.unload_idle_s,
            grace_s=max(self._check_interval_s, RETIRE_GRACE_S),
        )

    async def _unload(
        self, instance: V2Instance, state: InstanceState, steps: Plan, now: float
    ) -> frozenset[str]:
        """Unload what the plan says; what is READY afterwards."""
        for model, reason in steps.unload:
            try:
                await instance.unload(model)
            except TRANSPORT_ERRORS as exc:
                log.warning(
                    "endpoint=%s instance=%s cannot unload %s: %s", self.name, state.url, model, exc
                )
                continue
            self._metrics.unloads.labels(self.name, reason).inc()
            self._metrics.age_at_unload.labels(self.name).observe(now - state.seen.get(model, now))
            state.retiring.pop(model, None)
            state.ours.discard(model)
            self._progress.note(
                "model unloaded endpoint=%s instance=%s model=%s reason=%s",
                self.name,
                state.url,
                model,
                reason,
            )
        try:
            return await self._ready_models(instance)
        except TRANSPORT_ERRORS as exc:
            self._unreachable(state, exc)
            return frozenset()

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
        placement = self.placement
        wanted = frozenset(placement.holders)
        states = list(self.states.values())
        abandoned: list[str] = []
        up = {s.url: s.ready for s in states if s.error is None}
        unplaced = [u for u in up if u not in placement.instances]
        # Warm: on every reachable instance the placement puts it on; nothing is warm when no
        # instance answers at all.
        everywhere = {
            m
            for m, holders in placement.holders.items()
            if up and all(m in up[h] for h in holders if h in up)
        }
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
                placed_here = placement.models_on(state.url)
                given_up = self.given_up(state) & placed_here
                abandoned.extend(f"{m} on {state.url}" for m in sorted(given_up))
                lacking = sorted(placed_here - state.ready - given_up)
                if lacking:
                    reasons.append(f"{state.url} lacks {', '.join(lacking)}")
        if not states:
            reasons.append("no instances" if self._refreshed else "instances not listed yet")
        if unplaced:
            reasons.append(f"placement pending for {', '.join(sorted(unplaced))}")
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
                s.url: s.published for s in self.states.values() if s.checked and s.error is None
            }
            pending = [s.url for s in self.states.values() if not s.checked]
            flag = True if status.warm else (None if pending else False)
            try:
                placed = {url: self.placement.models_on(url) for url in entries}
                await self._publisher.publish(entries, all_warm=flag, keep=pending, placed=placed)
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
        self._listed = list(urls)
        self.placement = self._place(endpoint, self._up(urls))
        self._metrics.placed_models.labels(self.name).set(len(self.placement.holders))
        self._metrics.copies.labels(self.name).set(self.placement.copies)
        if self._fixed is None:
            self._active = await self._warm_sets.active(self.name, endpoint.placement.unload_idle_s)
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

    def _up(self, urls: Sequence[str]) -> list[str]:
        # Unreachable instances hold nothing: their models are placed on the others (healing).
        return [u for u in urls if (st := self.states.get(u)) is None or st.error is None]

    def _place(self, endpoint: V2Endpoint, urls: Sequence[str]) -> Placement:
        warm_set = self._warm_set
        demand = [
            ModelDemand(m.name, demand=m.traffic, priority=m.priority, size_bytes=m.size_bytes)
            for m in (*warm_set.models, *warm_set.over_capacity)
        ]
        policy = SIDECAR_POLICY if self._fixed is not None else endpoint.placement
        return place(demand, dict.fromkeys(urls, endpoint.capacity), policy)

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
