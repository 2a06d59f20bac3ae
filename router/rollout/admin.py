"""Admin routes of the rollout: ``GET /v1/admin/tenants/{tenant}/rollout`` and
``POST /v1/admin/tenants/{tenant}/rollout/{pause|resume|promote|rollback}``."""

from __future__ import annotations

import logging

from aiohttp import web

from router.errors import InvalidRequest, NotReady, RouterError, TenantNotFound
from router.keys import ROLLOUT, STATE
from router.ops import json_response, require_admin
from router.rollout.controller import RolloutConflict, RolloutController, RolloutUnavailable
from router.rollout.decision import ACTIONS, ActionRefused

log = logging.getLogger(__name__)


class Conflict(RouterError):
    status, code = 409, "conflict"


def _controller(request: web.Request) -> tuple[RolloutController, str]:
    require_admin(request)
    tenant = request.match_info["tenant"]
    if tenant not in request.app[STATE].table.routes:
        raise TenantNotFound(f"no tenant {tenant!r}")
    controller = request.app[ROLLOUT]
    if tenant not in controller.runs:
        raise InvalidRequest(f"tenant {tenant!r} has no experiment.rollout")
    return controller, tenant


async def show(request: web.Request) -> web.Response:
    controller, tenant = _controller(request)
    try:
        return json_response(await controller.describe(tenant))
    except RolloutUnavailable as exc:
        raise NotReady(str(exc), retry_after=1) from exc


async def command(request: web.Request) -> web.Response:
    controller, tenant = _controller(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown rollout action {action!r} (one of {', '.join(ACTIONS)})")
    try:
        described = await controller.command(tenant, action)
    except (ActionRefused, RolloutConflict) as exc:
        raise Conflict(str(exc)) from exc
    except RolloutUnavailable as exc:
        raise NotReady(str(exc), retry_after=1) from exc
    log.info("rollout tenant=%s action=%s by the admin API", tenant, action)
    return json_response(described)
