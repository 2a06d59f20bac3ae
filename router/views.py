"""The data-plane view: thin transport over InvocationService.

Order matters and is cheap-first: tenant, key, admission, then the body (413 decided from
Content-Length, or while streaming, before the body is read whole), then the upstream call.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from router.assignment import Assignment
from router.auth import check_key
from router.errors import InvalidRequest, PayloadTooLarge, RouterError, TenantNotFound
from router.http_errors import error_response, from_router_error, new_request_id
from router.keys import METRICS, SERVICE, STATE
from router.processing.shadow import ShadowJob
from router.service import Call

log = logging.getLogger(__name__)

UNKNOWN_TENANT = "_unknown"
NO_VARIANT = "none"


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(
                f"body of {length} bytes is over this tenant's {limit}-byte limit"
            )
        try:
            return await request.content.readexactly(length) if length else b""
        except asyncio.IncompleteReadError as exc:
            raise InvalidRequest("the body ended before its Content-Length") from exc
    # Chunked: count as it streams and stop at the limit.
    chunks = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return bytes(chunks)
        chunks += chunk
        if len(chunks) > limit:
            raise PayloadTooLarge(f"body is over this tenant's {limit}-byte limit")


async def invoke(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    metrics = app[METRICS]
    table = app[STATE].table  # read once: this request finishes on this snapshot
    tenant_id = request.match_info["tenant"]
    headers = request.headers
    request_id = headers.get("X-Request-Id") or new_request_id()
    route = table.routes.get(tenant_id)
    tenant_label = tenant_id if route is not None else UNKNOWN_TENANT
    assignment: Assignment | None = None
    shadow: ShadowJob | None = None
    response: web.Response
    try:
        if route is None:
            raise TenantNotFound(f"no tenant {tenant_id!r}")
        if route.api_keys:
            check_key(
                tenant_id, route.api_keys, headers.get("Authorization"), table.snapshot.key_owners
            )
        limiter = route.limiter
        limiter.acquire()
        try:
            service = app[SERVICE]
            deadline = service.deadline(route)
            body = await read_body(request, route.max_body_bytes)
            assignment = await service.assign(route, headers.get("X-Unit-Id"))
            call = Call(
                body=body,
                content_type=headers.get("Content-Type", "application/json"),
                request_id=request_id,
                accept=headers.get("Accept"),
                custom_attributes=headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            )
            processing = route.processing
            if processing is None:  # the fast path: bytes in, bytes out
                upstream = await service.invoke(route, assignment, call, deadline=deadline)
                body, content_type = upstream.body, upstream.content_type
            else:
                answer = await processing.handle(
                    service, route, assignment, call, deadline=deadline
                )
                body, content_type, assignment = answer.body, answer.content_type, answer.assignment
                shadow = answer.shadow
        finally:
            limiter.release()
        response = web.Response(
            body=body,
            headers={
                "Content-Type": content_type,
                "X-Model-Id": assignment.model,
                "X-Variant": assignment.variant,
                "X-Request-Id": request_id,
            },
        )
    except RouterError as exc:
        response = from_router_error(exc, request_id)
        if assignment is not None:
            response.headers["X-Model-Id"] = assignment.model
            response.headers["X-Variant"] = assignment.variant
    except Exception:  # never a traceback to the caller
        log.exception("unhandled error tenant=%s request_id=%s", tenant_id, request_id)
        response = error_response(500, "internal_error", "internal error; see logs", request_id)
    variant = assignment.variant if assignment is not None else NO_VARIANT
    app[SERVICE].count_request(tenant_label, variant, response.status)
    metrics.request_duration.observe(time.perf_counter() - started)
    if shadow is not None and route is not None and route.processing is not None:
        # Answer the caller first; only then may the shadow copy start.
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return response  # the caller left: no answer to compare with
        route.processing.shadows.submit(shadow)
    return response
