"""Operational and admin routes: health, readiness, metrics, tenants, assignment look-up, reload."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from router.backends.v2 import V2Backend
from router.errors import InvalidRequest, NotFound, NotReady, TenantNotFound, Unauthorized
from router.keys import ASSIGNER, BACKENDS, CONFIG, METRICS, REDIS, SETTINGS, STATE
from router.routing import TenantRoute
from router.warm_map import warm_flag_key


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        headers={"Content-Type": "application/json"},
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    table = state.table
    if table.snapshot.generation < 1:
        raise NotReady("config not loaded yet", retry_after=1)
    if request.app[SETTINGS].wait_for_warm and not state.was_ready:
        # Only endpoints some tenant uses can hold readiness back, and only until the process has
        # been ready once: an endpoint added later, or a scale-out (flag down while a new MME
        # instance warms), must not take ready replicas out of service (SPEC /readyz).
        used = {route.config.endpoint for route in table.routes.values()}
        waiting = sorted(used - state.warm_seen)
        if waiting:
            try:
                values = await request.app[REDIS].mget([warm_flag_key(n) for n in waiting])
            except (RedisError, OSError) as exc:
                raise NotReady(
                    f"cannot read the preloader's warm signal: {exc}", retry_after=1
                ) from exc
            state.warm_seen.update(n for n, v in zip(waiting, values, strict=True) if v == b"1")
            cold = [n for n in waiting if n not in state.warm_seen]
            if cold:
                raise NotReady(
                    f"waiting for the preloader to warm: {', '.join(cold)}", retry_after=1
                )
    state.was_ready = True
    return json_response({"status": "ready", "generation": table.snapshot.generation})


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS].registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def require_admin(request: web.Request) -> None:
    token = request.app[SETTINGS].admin_token
    if token is None:
        return
    given = request.headers.get("Authorization", "")
    # Header bytes that are not UTF-8 arrive as surrogates: compare them as the bytes they were
    # (a plain encode() would raise, and a bad header is a 401, never a 500).
    expected = f"Bearer {token}".encode()
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
        raise Unauthorized("admin routes need 'Authorization: Bearer <admin token>'")


def _describe(route: TenantRoute) -> dict[str, Any]:
    tenant = route.config
    described: dict[str, Any] = {
        "endpoint": tenant.endpoint,
        "backend": route.backend.describe(),
        "model": tenant.model,
        "auth": bool(route.api_keys),
        "limits": tenant.limits.model_dump(),
        "models": list(tenant.models()),
    }
    if tenant.experiment is not None:
        described["experiment"] = tenant.experiment.model_dump(mode="json")
    processing = tenant.model_dump(
        mode="json",
        include={"preprocess", "postprocess", "shadow", "fallback", "ensemble", "select_model"},
        exclude_defaults=True,
    )
    if processing:
        described["processing"] = processing
    return described


async def list_tenants(request: web.Request) -> web.Response:
    require_admin(request)
    table = request.app[STATE].table
    return json_response(
        {
            "generation": table.snapshot.generation,
            "tenants": {tid: _describe(route) for tid, route in table.routes.items()},
        }
    )


async def list_endpoints(request: web.Request) -> web.Response:
    """Per endpoint, its instances and (v2, from the preloader's warm map) the models each holds:
    ``models`` READY there, ``placed`` those the placement puts there (the rest are on-demand
    loads), ``outstanding`` requests this router has in flight there."""
    require_admin(request)
    table = request.app[STATE].table
    warm_map = request.app[BACKENDS].warm_map
    endpoints: dict[str, Any] = {}
    for name, backend in sorted(table.backends.items()):
        described = backend.describe()
        if isinstance(backend, V2Backend):
            instances = []
            for instance in backend.instances:
                holding = warm_map.holding(name, instance.url) if warm_map else None
                instances.append(
                    {
                        "url": instance.url,
                        "models": sorted(holding.models) if holding else [],
                        "placed": sorted(holding.placed) if holding else [],
                        "outstanding": instance.outstanding,
                        "published": holding is not None,
                    }
                )
            described["instances"] = instances
        endpoints[name] = described
    return json_response({"generation": table.snapshot.generation, "endpoints": endpoints})


async def assignment(request: web.Request) -> web.Response:
    require_admin(request)
    tenant_id = request.match_info["tenant"]
    route = request.app[STATE].table.routes.get(tenant_id)
    if route is None:
        raise TenantNotFound(f"no tenant {tenant_id!r}")
    unit = request.query.get("unit")
    if not unit:
        raise InvalidRequest("query parameter 'unit' is required")
    if route.plan is None:
        return json_response(
            {"tenant": tenant_id, "unit": unit, "experiment": None, "variant": "default",
             "model": route.config.model, "source": "default"}
        )  # fmt: skip
    decided = await request.app[ASSIGNER].peek(route.plan, unit)
    return json_response(
        {
            "tenant": tenant_id,
            "unit": unit,
            "experiment": route.plan.experiment.name,
            "variant": decided.variant,
            "model": decided.model,
            "source": decided.source,
        }
    )


async def reload(request: web.Request) -> web.Response:
    require_admin(request)
    outcome = await request.app[CONFIG].reload(force=True)
    return json_response(
        {
            "ok": outcome.ok,
            "generation": outcome.snapshot.generation,
            "tenants": len(outcome.snapshot.tenants),
            "issues": [str(i) for i in outcome.issues],
        }
    )


async def not_found(request: web.Request) -> web.Response:
    raise NotFound(f"no route {request.method} {request.path}")
