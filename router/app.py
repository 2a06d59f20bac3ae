"""``create_app(settings)``: every shared object under a typed AppKey, created in its own cleanup
context in dependency order and torn down in reverse."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from router import ops, sagemaker_front, views
from router.assignment import Assigner
from router.backends.sagemaker import SageMakerClients
from router.backends.v2 import V2Backend
from router.global_rate import GlobalRates
from router.http_errors import error_middleware
from router.keys import (
    ASSIGNER,
    BACKENDS,
    CONFIG,
    HTTP,
    LIMITERS,
    METRICS,
    RATES,
    REDIS,
    ROLLOUT,
    SAGEMAKER,
    SERVICE,
    SETTINGS,
    STATE,
)
from router.loops import cancel_and_wait
from router.metrics import RouterMetrics
from router.redis_conn import PoolOptions, close_redis, open_redis
from router.redis_warmup import warm_pool
from router.rollout import admin as rollout_admin
from router.rollout.apply import RouteWeights
from router.rollout.controller import RolloutController
from router.rollout.store import RolloutStore
from router.routing import (
    BackendFactory,
    LimiterRegistry,
    RouterState,
    RoutingTable,
    compile_table,
)
from router.service import InvocationService
from router.serving import HTTP_LIMITS
from router.settings import Settings
from router.traffic import TrafficCounter
from router.warm_map import WarmMap
from tenancy.store import ConfigStore, ReloadOutcome

log = logging.getLogger(__name__)


async def _http(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=512, keepalive_timeout=30, ttl_dns_cache=10
    )
    async with aiohttp.ClientSession(
        connector=connector, skip_auto_headers=("User-Agent",), auto_decompress=False
    ) as session:
        app[HTTP] = session
        yield


async def _sagemaker(app: web.Application) -> AsyncIterator[None]:
    # InvokeEndpoint shares the router's pooled session (started before this context).
    clients = SageMakerClients(http=app[HTTP])
    app[SAGEMAKER] = clients
    yield
    await clients.aclose()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    budget_s = app[SETTINGS].redis_budget_ms / 1000
    # No client-side retries: the request's Redis budget is the only retry policy.
    # A blocking pool: past max_connections a call waits (inside its budget) instead of failing.
    # (Sentinel and Cluster pools do not block: past max_connections a call fails, the hash decides.)
    client = open_redis(
        app[SETTINGS].redis_target,
        PoolOptions(
            max_connections=128,
            wait_timeout_s=max(budget_s, 0.05),
            connect_timeout_s=max(budget_s, 0.05),
            socket_timeout_s=max(budget_s * 5, 0.1),
            retries=0,
            health_check_interval_s=0.0,
        ),
    )
    app[REDIS] = client
    yield
    await close_redis(client)


async def _routing(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    store = app[CONFIG]
    redis = app[REDIS]
    warm_map = WarmMap(redis)
    traffic = TrafficCounter(redis)
    backends = BackendFactory(
        app[HTTP], app[SAGEMAKER], metrics, warm_map=warm_map, traffic=traffic
    )
    rates = GlobalRates(
        redis, metrics, budget_s=settings.redis_budget_ms / 1000, replica_id=settings.instance_id
    )
    await rates.join()
    app[RATES] = rates
    limiters = LimiterRegistry(rates)
    app[BACKENDS] = backends
    app[LIMITERS] = limiters
    state = RouterState(compile_table(store.current, backends, limiters))
    await backends.refresh_discovered()
    app[STATE] = state
    assigner = Assigner(redis, metrics, budget_s=settings.redis_budget_ms / 1000)
    app[ASSIGNER] = assigner
    # Before the app listens (so before /readyz can answer 200): a cold pool is no outage.
    await warm_pool(redis, scripts=(assigner.script.script, rates.take_script.script))
    service = app[SERVICE] = InvocationService(metrics, assigner)
    metrics.config_generation.set(store.current.generation)
    weights = RouteWeights(state)
    rollout = RolloutController(
        RolloutStore(redis),
        metrics.rollout,
        weights,
        on_redis_error=metrics.redis_errors.inc,
        interval_s=settings.rollout_interval_s,
    )
    app[ROLLOUT] = rollout
    service.rollouts = rollout.counters
    rollout.configure(store.current.tenants)
    # A restarted replica resumes where the rollout is before it serves (bounded: Redis may be down).
    # Each Redis call is bounded by the pool's socket timeout, so this cannot hang the start.
    await rollout.tick()

    def track_v2(table: RoutingTable) -> None:
        warm_map.track(name for name, b in table.backends.items() if isinstance(b, V2Backend))

    def swap(outcome: ReloadOutcome) -> None:
        metrics.config_reloads.labels("ok" if outcome.ok else "error").inc()
        if outcome.changed:
            rollout.configure(outcome.snapshot.tenants)
            state.table = weights.overlay(compile_table(outcome.snapshot, backends, limiters))
            backends.prune(set(outcome.snapshot.endpoints))
            track_v2(state.table)
            assigner.clear_cache()
            metrics.config_generation.set(outcome.snapshot.generation)

    track_v2(state.table)
    store.on_reload = swap
    tasks = [
        asyncio.create_task(store.watch(settings.reload_interval_s), name="config-watch"),
        asyncio.create_task(warm_map.run(), name="warm-map"),
        asyncio.create_task(traffic.run(), name="traffic-flush"),
        asyncio.create_task(rates.run(), name="replica-heartbeat"),
        asyncio.create_task(assigner.run_renewals(), name="assignment-renewals"),
        asyncio.create_task(rollout.run(), name="rollout"),
    ]
    yield
    await cancel_and_wait(tasks)
    await rates.aclose()
    await assigner.aclose()
    await backends.aclose()


def create_app(settings: Settings, *, metrics: RouterMetrics | None = None) -> web.Application:
    """Build the router. Loads the config strictly: an invalid directory raises ConfigError."""
    app = web.Application(middlewares=[error_middleware], handler_args=HTTP_LIMITS)
    app[SETTINGS] = settings
    app[METRICS] = metrics or RouterMetrics()
    store = ConfigStore(settings.config_dir)
    store.load_initial()
    app[CONFIG] = store
    app.cleanup_ctx.extend([_http, _sagemaker, _redis, _routing])
    app.router.add_post("/v1/tenants/{tenant}/invocations", views.invoke)
    # The SageMaker Runtime InvokeEndpoint wire protocol; EndpointName is the tenant id.
    app.router.add_post("/endpoints/{tenant}/invocations", sagemaker_front.invoke_endpoint)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/metrics", ops.metrics)
    app.router.add_get("/v1/admin/tenants", ops.list_tenants)
    app.router.add_get("/v1/admin/endpoints", ops.list_endpoints)
    app.router.add_get("/v1/admin/tenants/{tenant}/assignment", ops.assignment)
    app.router.add_post("/v1/admin/reload", ops.reload)
    app.router.add_get("/v1/admin/tenants/{tenant}/rollout", rollout_admin.show)
    app.router.add_post("/v1/admin/tenants/{tenant}/rollout/{action}", rollout_admin.command)
    return app
