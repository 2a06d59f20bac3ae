"""The data-plane view: thin transport over InvocationService.

Order matters and is cheap-first: tenant, key, admission, then the body (413 decided from
Content-Length, or while streaming, before the body is read whole; 408 when it trickles past the
tenant's timeout), then the upstream call.

One flow serves both fronts; a ``Protocol`` says how a front names the request id and the unit,
authenticates, and shapes answers (native JSON here, the SageMaker Runtime's in sagemaker_front).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from router.assignment import Assignment
from router.auth import check_key
from router.backends.base import Backend
from router.caller_headers import request_id_of, unit_id_of
from router.errors import (
    CallerGone,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    RouterError,
    TenantNotFound,
)
from router.http_errors import error_response, from_router_error
from router.keys import METRICS, SERVICE, SETTINGS, STATE
from router.logs import ACCESS_LOGGER
from router.processing.shadow import ShadowJob
from router.routing import RoutingTable, TenantRoute
from router.service import Call

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

UNKNOWN_TENANT = "_unknown"
NO_VARIANT = "none"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


async def _read(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None:
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


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused early when too large, and within ``timeout_s`` (slowloris)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over this tenant's {limit}-byte limit")
    try:
        if request.content.is_eof():  # all of it arrived with the headers: no timer needed
            return await _read(request, limit)
        async with asyncio.timeout(timeout_s):
            return await _read(request, limit)
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the body did not arrive within the tenant's {timeout_s * 1000:.0f} ms timeout"
        ) from exc
    except (ConnectionError, web.HTTPException, InvalidRequest) as exc:
        if request.transport is None or request.transport.is_closing():
            raise CallerGone("the caller closed the connection while sending the body") from exc
        if isinstance(exc, InvalidRequest):
            raise
        raise InvalidRequest(f"the body could not be read: {exc}") from exc


def content_type_for(backend: Backend, given: str | None, body: bytes) -> str:
    """The type sent upstream. A v2 endpoint speaks JSON: ``curl -d`` (form type) or no type at all
    is taken as JSON when the body is JSON, and answered with a hint when it is not."""
    if backend.kind != "v2" or (given is not None and not given.startswith(FORM)):
        return given or JSON
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        sent = f"Content-Type: {given}" if given else "no Content-Type"
        raise InvalidRequest(
            f"the body is not JSON ({sent}); did you mean Content-Type: application/json?"
        ) from exc
    return JSON


BodyCheck = Callable[[bytes], None]


class Protocol:
    """The native front (``/v1/tenants/{tenant}/invocations``): SPEC's headers and JSON errors."""

    def request_id(self, headers: CIMultiDictProxy[str]) -> str:
        return request_id_of(headers)

    def unit(self, headers: CIMultiDictProxy[str]) -> str | None:
        return unit_id_of(headers)

    def authorize(
        self, request: web.Request, route: TenantRoute, table: RoutingTable
    ) -> BodyCheck | None:
        """Raise unless the caller may use ``route``; may return a check to run on the body."""
        if route.api_keys:
            check_key(
                route.tenant_id,
                route.api_keys,
                request.headers.get("Authorization"),
                table.snapshot.key_owners,
            )
        return None

    def success(
        self,
        body: bytes,
        content_type: str,
        assignment: Assignment,
        request_id: str,
        custom_attributes: str | None,
    ) -> web.Response:
        return web.Response(
            body=body,
            headers={
                "Content-Type": content_type,
                "X-Model-Id": assignment.model,
                "X-Variant": assignment.variant,
                "X-Request-Id": request_id,
            },
        )

    def error(
        self, exc: RouterError, request_id: str, assignment: Assignment | None
    ) -> web.Response:
        response = from_router_error(exc, request_id)
        if assignment is not None:
            response.headers["X-Model-Id"] = assignment.model
            response.headers["X-Variant"] = assignment.variant
        return response

    def internal_error(self, request_id: str) -> web.Response:
        return error_response(500, "internal_error", "internal error; see logs", request_id)


NATIVE = Protocol()


async def invoke(request: web.Request) -> web.StreamResponse:
    return await serve(request, NATIVE)


async def serve(request: web.Request, protocol: Protocol) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    metrics = app[METRICS]
    table = app[STATE].table  # read once: this request finishes on this snapshot
    tenant_id = request.match_info["tenant"]
    headers = request.headers
    request_id = protocol.request_id(headers)
    route = table.routes.get(tenant_id)
    tenant_label = tenant_id if route is not None else UNKNOWN_TENANT
    assignment: Assignment | None = None
    shadow: ShadowJob | None = None
    returned_attributes: str | None = None
    response: web.Response
    instance = ""
    try:
        if route is None:
            raise TenantNotFound(f"no tenant {tenant_id!r}")
        check_body = protocol.authorize(request, route, table)
        unit = protocol.unit(headers)
        limiter = route.limiter
        limiter.acquire()
        try:
            service = app[SERVICE]
            deadline = service.deadline(route)
            body = await read_body(request, route.max_body_bytes, deadline - service.loop_time())
            if check_body is not None:
                check_body(body)
            call = Call(
                body=body,
                content_type=content_type_for(route.backend, headers.get("Content-Type"), body),
                request_id=request_id,
                accept=headers.get("Accept"),
                custom_attributes=headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            )
            assignment = await service.assign(route, unit)
            processing = route.processing
            if processing is None:  # the fast path: bytes in, bytes out
                upstream = await service.invoke(route, assignment, call, deadline=deadline)
                body, content_type, instance = (
                    upstream.body,
                    upstream.content_type,
                    upstream.instance,
                )
                returned_attributes = upstream.custom_attributes
            else:
                answer = await processing.handle(
                    service, route, assignment, call, deadline=deadline
                )
                body, content_type, assignment = answer.body, answer.content_type, answer.assignment
                shadow = answer.shadow
        finally:
            limiter.release()
        response = protocol.success(body, content_type, assignment, request_id, returned_attributes)
    except RouterError as exc:
        response = protocol.error(exc, request_id, assignment)
    except Exception:  # never a traceback to the caller
        log.exception("unhandled error tenant=%r request_id=%s", tenant_id, request_id)
        response = protocol.internal_error(request_id)
    status = response.status
    transport = request.transport
    if status != CallerGone.status and (transport is None or transport.is_closing()):
        status = CallerGone.status  # it left while we waited upstream: nobody reads this answer
    if status == CallerGone.status:
        log.info("caller went away tenant=%r request_id=%s", tenant_id, request_id)
    variant = assignment.variant if assignment is not None else NO_VARIANT
    app[SERVICE].count_request(tenant_label, variant, status)
    elapsed = time.perf_counter() - started
    metrics.request_duration.observe(elapsed)
    if app[SETTINGS].access_log:
        access_log.info(
            "request",
            extra={
                "fields": {
                    "request_id": request_id,
                    "tenant": tenant_label,
                    "variant": variant,
                    "model": assignment.model if assignment is not None else None,
                    "instance": instance or None,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                }
            },
        )
    if shadow is not None and route is not None and route.processing is not None:
        # Answer the caller first; only then may the shadow copy start.
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return response  # the caller left: no answer to compare with
        route.processing.shadows.submit(shadow)
    return response
