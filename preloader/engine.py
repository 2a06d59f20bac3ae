"""The preloader proper: one warmer per endpoint, under a leader lock in cluster mode, following
config reloads; or, in sidecar mode, one warmer for the local instance.

Cluster mode runs every endpoint of the config, each behind its own lock (``preloader.leader``), so
several preloader replicas share the endpoints and one takes over when another dies. Sidecar mode
takes no lock and writes nothing to Redis: the instance's URL as the sidecar sees it
(``http://127.0.0.1:PORT``) is not the one the router knows, and the pod's readiness (``/ready``)
is the signal that keeps traffic away from it until it is warm.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from preloader.leader import Leadership, RedisLock, lock_key
from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress
from preloader.publish import WarmPublisher
from preloader.sagemaker_warmer import SageMakerWarmer
from preloader.settings import Settings
from preloader.v2_warmer import V2Warmer
from preloader.warm_set import WarmSets
from preloader.warmer import Warmer, WarmStatus
from router.backends.sagemaker import SageMakerClients
from router.loops import cancel_and_wait
from router.redis_conn import RedisClient
from tenancy.models import Endpoint, SageMakerEndpoint, V2Endpoint
from tenancy.snapshot import Snapshot
from tenancy.store import ConfigStore, ReloadOutcome

log = logging.getLogger(__name__)


class SidecarError(ValueError):
    """``--sidecar`` cannot tell whose warm set to load."""


def sidecar_endpoint(snapshot: Snapshot, requested: str | None) -> str:
    """The v2 endpoint whose warm set a sidecar loads: ``requested``, or the only v2 endpoint."""
    v2 = sorted(n for n, e in snapshot.endpoints.items() if isinstance(e, V2Endpoint))
    if requested is not None:
        if requested not in v2:
            raise SidecarError(
                f"--endpoint {requested!r} is not a v2 endpoint of the config "
                f"(v2 endpoints: {', '.join(v2) or 'none'})"
            )
        return requested
    if len(v2) != 1:
        raise SidecarError(
            f"the config has {len(v2)} v2 endpoints ({', '.join(v2) or 'none'}): "
            "name one with --endpoint NAME"
        )
    return v2[0]


def default_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class _Running:
    kind: str
    warmer: Warmer
    leadership: Leadership | None
    task: asyncio.Task[None]


class Preloader:
    def __init__(
        self,
        settings: Settings,
        *,
        store: ConfigStore,
        session: aiohttp.ClientSession,
        redis: RedisClient,
        sagemaker: SageMakerClients,
        metrics: PreloaderMetrics,
        progress: Progress,
    ) -> None:
        self.settings = settings
        self.store = store
        self.session = session
        self.redis = redis
        self.sagemaker = sagemaker
        self.metrics = metrics
        self.progress = progress
        self.token = settings.instance_id or default_token()
        self.warm_sets = WarmSets(lambda: self.store.current, redis)
        self.sidecar: str | None = None
        if settings.sidecar_url is not None:
            self.sidecar = sidecar_endpoint(store.current, settings.endpoint)
        self.running: dict[str, _Running] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def mode(self) -> str:
        return "sidecar" if self.sidecar is not None else "cluster"

    # -- building ----------------------------------------------------------------------------

    def _endpoint(self, name: str) -> Endpoint | None:
        return self.store.current.endpoints.get(name)

    def publisher(self, name: str) -> WarmPublisher | None:
        """Cluster mode writes the endpoint's warm map and flag; a sidecar writes nothing."""
        if self.sidecar is not None:
            return None
        return WarmPublisher(self.redis, name, flag_ttl_s=self.settings.warm_flag_ttl_s)

    def build_warmer(
        self, name: str, endpoint: Endpoint, publisher: WarmPublisher | None
    ) -> Warmer:
        s = self.settings
        if isinstance(endpoint, V2Endpoint):

            def v2() -> V2Endpoint | None:
                found = self._endpoint(name)
                return found if isinstance(found, V2Endpoint) else None

            return V2Warmer(
                name,
                endpoint=v2,
                warm_sets=self.warm_sets,
                session=self.session,
                publisher=publisher,
                metrics=self.metrics,
                progress=self.progress,
                check_interval_s=s.check_interval_s,
                load_timeout_s=s.load_timeout_s,
                urls=[s.sidecar_url] if s.sidecar_url is not None else None,
            )

        def sm() -> SageMakerEndpoint | None:
            found = self._endpoint(name)
            return found if isinstance(found, SageMakerEndpoint) else None

        return SageMakerWarmer(
            name,
            endpoint=sm,
            warm_sets=self.warm_sets,
            clients=self.sagemaker,
            publisher=publisher,
            metrics=self.metrics,
            progress=self.progress,
            check_interval_s=s.check_interval_s,
            load_timeout_s=s.load_timeout_s,
        )

    def _wanted(self) -> dict[str, Endpoint]:
        endpoints = self.store.current.endpoints
        if self.sidecar is not None:
            endpoint = endpoints.get(self.sidecar)
            return {self.sidecar: endpoint} if endpoint is not None else {}
        return dict(endpoints)

    # -- one pass (--once) -------------------------------------------------------------------

    async def warm_once(self) -> list[WarmStatus]:
        """Warm every endpoint (or the sidecar's instance) once, all at once; no lock."""
        warmers = [
            self.build_warmer(n, e, self.publisher(n)) for n, e in sorted(self._wanted().items())
        ]
        return list(await asyncio.gather(*(w.warm_once() for w in warmers)))

    # -- watching ----------------------------------------------------------------------------

    @staticmethod
    def _work(
        warmer: Warmer, publisher: WarmPublisher | None
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """The warmer's watch loop, with the warm flag refreshed beside it (cluster mode)."""

        async def work() -> None:
            if publisher is None:
                await warmer.run()
                return
            keeper = asyncio.create_task(publisher.keep_flag(), name=f"warm flag {warmer.name}")
            try:
                await warmer.run()
            finally:
                await cancel_and_wait([keeper])

        return work

    def _start(self, name: str, endpoint: Endpoint) -> None:
        publisher = self.publisher(name)
        warmer = self.build_warmer(name, endpoint, publisher)
        work = self._work(warmer, publisher)
        # The endpoint's series exist from the start (dashboards, alerts on rate()).
        self.metrics.warm_failures.labels(name)
        self.metrics.warm_duration.labels(name)
        leadership: Leadership | None = None
        if self.sidecar is None:
            lock = RedisLock(self.redis, lock_key(name), self.token, ttl_s=self.settings.lock_ttl_s)

            def changed(leading: bool, name: str = name) -> None:
                if name in self.running:  # not an endpoint that just left the config
                    self.metrics.leader.labels(name).set(1 if leading else 0)
                self.progress.note(
                    "%s endpoint=%s token=%s",
                    "leading" if leading else "not leading",
                    name,
                    self.token,
                )

            leadership = Leadership(lock, work, ttl_s=self.settings.lock_ttl_s, on_change=changed)
            self.metrics.leader.labels(name).set(0)
            task = asyncio.create_task(leadership.run(), name=f"leadership {name}")
        else:
            task = asyncio.create_task(work(), name=f"sidecar {name}")
        self.running[name] = _Running(endpoint.kind, warmer, leadership, task)

    def _stop(self, name: str) -> None:
        running = self.running.pop(name)
        running.task.cancel()
        self._stopping.add(running.task)
        running.task.add_done_callback(self._stopping.discard)
        self.metrics.forget(name)
        if running.leadership is not None:
            self.metrics.leader.remove(name)

    def reconcile(self) -> None:
        """Start warmers for new endpoints, stop those of removed ones, wake the rest."""
        wanted = self._wanted()
        for name in list(self.running):
            endpoint = wanted.get(name)
            if endpoint is None or endpoint.kind != self.running[name].kind:
                self._stop(name)
        for name, endpoint in wanted.items():
            if name not in self.running:
                self._start(name, endpoint)
            else:
                self.running[name].warmer.poke()

    def on_reload(self, outcome: ReloadOutcome) -> None:
        if outcome.changed:
            self.reconcile()

    async def start(self) -> None:
        self.reconcile()

    async def aclose(self) -> None:
        for name in list(self.running):
            self._stop(name)
        # Cancelled again until each has ended: a client call can swallow one cancellation (a
        # connect to an unreachable instance did, and shutdown hung).
        await cancel_and_wait(list(self._stopping))

    # -- readiness ---------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """(ready, details): sidecar: its instance is warm; cluster: every endpoint it works on
        (leads, or warms alone while Redis is unreachable) is. Models that keep failing to load
        are listed but do not hold readiness back (the warmers give up waiting for them)."""
        endpoints: dict[str, object] = {}
        ready = True
        reasons: list[str] = []
        for name, running in sorted(self.running.items()):
            status = running.warmer.status()
            ld = running.leadership
            working = ld is None or ld.leading or ld.solo
            endpoints[name] = {
                "leading": ld is None or ld.leading,
                "solo": ld is not None and ld.solo,
                "warm": status.warm if working else None,
                "reason": status.reason if working else "another preloader leads this endpoint",
                "models": status.models,
                "wanted": status.wanted,
                "instances": status.instances,
                "failed": [
                    {"instance": f.instance, "model": f.model, "reason": f.reason}
                    for f in status.failures
                ],
            }
            if ld is not None and not ld.attempted:
                ready = False
                reasons.append(f"{name}: electing a leader")
            elif working and not status.warm:
                ready = False
                reasons.append(f"{name}: {status.reason}")
            elif not working and ld is not None and ld.error is not None:
                ready = False
                reasons.append(f"{name}: {ld.error}")
        if not self.running:
            ready = False
            reasons.append("no endpoint to warm")
        details: dict[str, object] = {
            "ready": ready,
            "mode": self.mode,
            "token": self.token,
            "endpoints": endpoints,
        }
        if reasons:
            details["reason"] = "; ".join(reasons)
        return ready, details
