"""``create_app(settings)``: the preloader's own small HTTP server and its background work.

Shared objects live under typed AppKeys, each created in its own cleanup context in dependency
order (HTTP session, Redis, SageMaker clients, then the preloader and the config watcher, whose
tasks are cancelled and awaited at shutdown).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from preloader.engine import Preloader, sidecar_endpoint
from preloader.keys import CONFIG, HTTP, METRICS, PRELOADER, PROGRESS, REDIS, SAGEMAKER, SETTINGS
from preloader.metrics import PreloaderMetrics
from preloader.progress import Progress
from preloader.resources import http_session, redis_client, sagemaker_clients
from preloader.settings import Settings
from router.http_errors import error_middleware
from router.loops import cancel_and_wait
from tenancy.store import ConfigStore


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        headers={"Content-Type": "application/json"},
    )


async def healthz_view(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready_view(request: web.Request) -> web.Response:
    """200 once the warm set is loaded (sidecar: on the local instance; cluster: on every
    endpoint this process leads); 503 with the reason otherwise."""
    is_ready, details = request.app[PRELOADER].readiness()
    return json_response(details, 200 if is_ready else 503)


async def metrics_view(request: web.Request) -> web.Response:
    registry = request.app[METRICS].registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _http(app: web.Application) -> AsyncIterator[None]:
    async with http_session() as session:
        app[HTTP] = session
        yield


async def _redis(app: web.Application) -> AsyncIterator[None]:
    async with redis_client(app[SETTINGS].redis_target) as client:
        app[REDIS] = client
        yield


async def _sagemaker(app: web.Application) -> AsyncIterator[None]:
    async with sagemaker_clients() as clients:
        app[SAGEMAKER] = clients
        yield


async def _preloader(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = app[CONFIG]
    preloader = Preloader(
        settings,
        store=store,
        session=app[HTTP],
        redis=app[REDIS],
        sagemaker=app[SAGEMAKER],
        metrics=app[METRICS],
        progress=app[PROGRESS],
    )
    app[PRELOADER] = preloader
    store.on_reload = preloader.on_reload
    await preloader.start()
    watch = asyncio.create_task(store.watch(settings.reload_interval_s), name="config-watch")
    yield
    await cancel_and_wait([watch])
    store.on_reload = None
    await preloader.aclose()


def create_app(
    settings: Settings,
    *,
    metrics: PreloaderMetrics | None = None,
    progress: Progress | None = None,
) -> web.Application:
    """Build the preloader. Loads the config strictly: an invalid directory raises ConfigError,
    and ``--sidecar`` without a clear v2 endpoint raises SidecarError."""
    # The router's error middleware: unknown routes and methods answer JSON 404/405 here too.
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[METRICS] = metrics or PreloaderMetrics()
    app[PROGRESS] = progress or Progress()
    store = ConfigStore(settings.config_dir)
    store.load_initial()
    if settings.sidecar_url is not None:
        sidecar_endpoint(store.current, settings.endpoint)
    app[CONFIG] = store
    app.cleanup_ctx.extend([_http, _redis, _sagemaker, _preloader])
    app.router.add_get("/healthz", healthz_view)
    app.router.add_get("/ready", ready_view)
    app.router.add_get("/metrics", metrics_view)
    return app
