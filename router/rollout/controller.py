"""Runs every tenant's rollout on this replica: flush the local counts, read the shared state,
judge, apply the weight.

Each replica runs the same loop; Redis arbitrates. A tick is one script call per rollout (flush and
read together); a decision is one compare-and-set, so when two replicas judge the same window only
one takes the step. Every replica applies the stored state's weight on its next tick (every
``interval_s``, well within the 2 s the contract allows). Redis down: the weight in effect stays, and
nothing is judged or changed until Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import RedisError

from router.loops import reraise_if_cancelling
from router.rollout.counter import WindowCounter
from router.rollout.decision import (
    Action,
    Change,
    RolloutState,
    act,
    guardrails,
    judge,
    weight_of,
)
from router.rollout.figures import Window
from router.rollout.metrics import RolloutMetrics
from router.rollout.store import RolloutKeys, RolloutStore
from tenancy.models import Experiment, Tenant
from tenancy.rollout import Rollout, fingerprint

log = logging.getLogger(__name__)

# A stored rollout this replica has never had in its own config may be a newer config another
# replica already reloaded: wait this long (past hot reload's 2 s) before starting over on ours.
FOREIGN_GRACE_S = 5.0
CAS_ATTEMPTS = 3


class WeightSink(Protocol):
    """Makes ``canary_weight`` (percent; None: the file's own) the tenant's canary share."""

    def __call__(self, tenant: str, canary_weight: float | None) -> None: ...


class RolloutUnavailable(Exception):
    """Redis did not answer: the state can be neither read nor changed."""


class RolloutConflict(Exception):
    """The command does not apply now (status, or the rollout not started yet)."""


@dataclass(slots=True)
class RolloutRun:
    """One tenant experiment's rollout as this replica knows it."""

    tenant: str
    experiment: Experiment
    rollout: Rollout
    fingerprint: str
    keys: RolloutKeys
    counter: WindowCounter
    state: RolloutState | None = None
    weight: float | None = None  # applied; None: the file's until the state is first read
    last_window: Window = field(default_factory=Window)
    last_verdict: str = ""
    foreign_since: float | None = None

    @property
    def window_ttl_s(self) -> int:
        return int(self.rollout.step_s * 4 + 3600)


def _runs_for(tenants: Mapping[str, Tenant]) -> dict[str, tuple[Experiment, Rollout, str]]:
    found = {}
    for tenant_id, tenant in tenants.items():
        experiment = tenant.experiment
        if experiment is not None and experiment.rollout is not None:
            models = tuple(v.model for v in experiment.variants)
            fp = fingerprint(experiment.rollout, experiment.salt, models)
            found[tenant_id] = (experiment, experiment.rollout, fp)
    return found


class RolloutController:
    def __init__(
        self,
        store: RolloutStore,
        metrics: RolloutMetrics,
        apply: WeightSink,
        *,
        on_redis_error: Callable[[], None] = lambda: None,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._apply = apply
        self._on_redis_error = on_redis_error
        self.interval_s = interval_s
        self._clock = clock
        self.runs: dict[str, RolloutRun] = {}
        # The hot path's counters by tenant (InvocationService reads this mapping).
        self.counters: dict[str, WindowCounter] = {}
        # Fingerprints each (tenant, experiment) had in this process: a stored one among them is
        # stale for sure, so a changed block starts over at once.
        self._history: dict[tuple[str, str], set[str]] = {}

    # --- config -----------------------------------------------------------------------------

    def configure(self, tenants: Mapping[str, Tenant]) -> None:
        """Follow a new snapshot: keep unchanged rollouts, start changed ones afresh."""
        wanted = _runs_for(tenants)
        for tenant_id in [t for t in self.runs if t not in wanted]:
            gone = self.runs.pop(tenant_id)
            self.counters.pop(tenant_id, None)
            self._history.setdefault((tenant_id, gone.experiment.name), set()).add(gone.fingerprint)
            with contextlib.suppress(KeyError):  # never set: Redis was down all along
                self.metrics.weight.remove(tenant_id, gone.experiment.name)
            self._apply(tenant_id, None)
        for tenant_id, (experiment, rollout, fp) in wanted.items():
            known = self.runs.get(tenant_id)
            if known is not None and known.fingerprint == fp and known.experiment == experiment:
                continue
            if known is not None:
                self._history.setdefault((tenant_id, known.experiment.name), set()).add(
                    known.fingerprint
                )
            control, canary = experiment.variants
            run = RolloutRun(
                tenant=tenant_id,
                experiment=experiment,
                rollout=rollout,
                fingerprint=fp,
                keys=RolloutKeys.of(tenant_id, experiment.name),
                counter=WindowCounter(control.name, canary.name),
            )
            if known is not None and known.fingerprint == fp:
                # Same rollout, other experiment details (overrides, ttl): keep following it.
                run.state, run.weight = known.state, known.weight
            self.runs[tenant_id] = run
            self.counters[tenant_id] = run.counter
            if known is not None:
                # Same rollout: the same weight on the new plan. A changed one starts over at its
                # first step (this replica resets the stored state on its next tick).
                self._set_weight(run, run.weight if run.weight is not None else rollout.steps[0])

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.tick()

    async def tick(self) -> None:
        for run in list(self.runs.values()):
            try:
                await self._tick(run)
            except (RedisError, OSError) as exc:
                reraise_if_cancelling(exc)
                self._on_redis_error()
                log.debug("rollout tenant=%s: redis unavailable, weight held: %r", run.tenant, exc)

    async def _tick(self, run: RolloutRun) -> None:
        counted_under = run.state.seq if run.state is not None else 0
        pairs = run.counter.drain()
        synced = await self.store.sync(
            run.keys, counted_under, pairs, window_ttl_s=run.window_ttl_s
        )
        state = synced.state
        if state is None or state.fingerprint != run.fingerprint:
            state = await self._start_over(run, state, synced.now)
            if state is None:
                return
        self._follow(run, state)
        if synced.window is None:
            return  # the state moved since this replica last counted: judge the next window
        run.last_window = synced.window
        verdict = judge(run.rollout, state, synced.window, synced.now)
        run.last_verdict = verdict.reason
        if verdict.change is not None:
            await self._change(run, state, verdict.change)

    async def _start_over(
        self, run: RolloutRun, stored: RolloutState | None, now: float
    ) -> RolloutState | None:
        if stored is not None:
            seen = self._history.get((run.tenant, run.experiment.name), set())
            if stored.fingerprint not in seen:
                mono = self._clock()
                if run.foreign_since is None:
                    run.foreign_since = mono
                if mono - run.foreign_since < FOREIGN_GRACE_S:
                    return None  # perhaps a newer config: give this replica's reload time
        run.foreign_since = None
        reason = "started" if stored is None else "the rollout block, salt or models changed"
        first = run.rollout.steps[0]
        seq = await self.store.cas(
            run.keys,
            stored,
            fingerprint=run.fingerprint,
            step=0,
            status="progressing",
            reason=f"{reason}: canary weight {first:g}%",
        )
        if seq is None:
            return None  # another replica did it first: read it next tick
        run.counter.drain()
        log.info(
            "rollout tenant=%s experiment=%s started steps=%s reason=%s",
            run.tenant,
            run.experiment.name,
            list(run.rollout.steps),
            reason,
        )
        return RolloutState(run.fingerprint, seq, 0, "progressing", now, f"{reason}")

    def _follow(self, run: RolloutRun, state: RolloutState) -> None:
        run.state = state
        weight = weight_of(run.rollout, state)
        if weight != run.weight:
            log.debug("rollout tenant=%s weight %s -> %s", run.tenant, run.weight, weight)
            self._set_weight(run, weight)

    def _set_weight(self, run: RolloutRun, weight: float) -> None:
        run.weight = weight
        self._apply(run.tenant, weight)
        self.metrics.weight.labels(run.tenant, run.experiment.name).set(weight)

    async def _change(self, run: RolloutRun, state: RolloutState, change: Change) -> bool:
        seq = await self.store.cas(
            run.keys,
            state,
            fingerprint=run.fingerprint,
            step=change.step,
            status=change.status,
            reason=change.reason,
        )
        if seq is None:
            return False  # another replica changed it first
        run.counter.drain()  # counted under the old step: not the new window's
        run.last_verdict = f"{change.reason}; judged again next tick"
        new = RolloutState(
            run.fingerprint, seq, change.step, change.status, state.since, change.reason
        )
        self._follow(run, new)
        self.metrics.event(run.tenant, change.event)
        level = logging.WARNING if change.event in ("rolled_back", "paused") else logging.INFO
        log.log(
            level,
            "rollout tenant=%s experiment=%s event=%s weight=%g reason=%s",
            run.tenant,
            run.experiment.name,
            change.event,
            weight_of(run.rollout, new),
            change.reason,
        )
        if change.status == "complete":
            canary = run.experiment.variants[1]
            log.info(
                "rollout tenant=%s experiment=%s complete: the canary takes all traffic; make "
                "it the tenant's model in its file (model: %s) and drop the experiment",
                run.tenant,
                run.experiment.name,
                canary.model,
            )
        return True

    # --- admin ------------------------------------------------------------------------------

    def _run(self, tenant: str) -> RolloutRun:
        run = self.runs.get(tenant)
        if run is None:
            raise LookupError(tenant)
        return run

    async def describe(self, tenant: str) -> dict[str, Any]:
        run = self._run(tenant)
        try:
            state, window = await self.store.read(run.keys)
        except (RedisError, OSError) as exc:
            raise RolloutUnavailable(f"redis unavailable: {exc}") from exc
        return self._describe(run, state, window)

    def _describe(
        self, run: RolloutRun, state: RolloutState | None, window: Window
    ) -> dict[str, Any]:
        described: dict[str, Any] = {
            "tenant": run.tenant,
            "experiment": run.experiment.name,
            "rollout": run.rollout.model_dump(mode="json"),
            "weight": run.weight,
        }
        if state is None or state.fingerprint != run.fingerprint:
            described.update(status="starting", reason="not started yet on this config")
            return described
        checks = guardrails(run.rollout, window)
        described.update(
            status=state.status,
            step=state.step + 1,
            steps=len(run.rollout.steps),
            stored_weight=weight_of(run.rollout, state),
            since=round(state.since, 3),
            reason=state.reason,
            figures=window.describe(),
            guardrails=checks.describe(),
            judgement=(
                run.last_verdict
                if state.status == "progressing"
                else f"{state.status}: nothing to judge"
            ),
        )
        return described

    async def command(self, tenant: str, action: Action) -> dict[str, Any]:
        """Apply an operator's command (pause, resume, promote, rollback); the new description."""
        run = self._run(tenant)
        try:
            for _ in range(CAS_ATTEMPTS):
                state, _window = await self.store.read(run.keys)
                if state is None or state.fingerprint != run.fingerprint:
                    raise RolloutConflict("the rollout has not started on this config yet")
                change = act(run.rollout, state, action)
                if await self._change(run, state, change):
                    state, window = await self.store.read(run.keys)
                    return self._describe(run, state, window)
        except (RedisError, OSError) as exc:
            raise RolloutUnavailable(f"redis unavailable: {exc}") from exc
        raise RolloutConflict("the rollout kept changing under the command; try again")
