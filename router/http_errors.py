"""JSON error bodies and the middleware that guarantees no request ends in a bare 500."""

from __future__ import annotations

import logging
import math

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from router.caller_headers import new_request_id, request_id_of
from router.errors import RouterError

__all__ = ["error_middleware", "error_response", "from_router_error", "new_request_id"]

log = logging.getLogger(__name__)

JSON = "application/json"


def _error_body(code: str, message: str, request_id: str) -> bytes:
    error = {"error": {"code": code, "message": message, "request_id": request_id}}
    try:
        return orjson.dumps(error)
    except TypeError:  # a lone surrogate (an invalid byte in a header or path) in the message
        safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
        return orjson.dumps({"error": {**error["error"], "message": safe}})


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    retry_after: float | None = None,
    extra: dict[str, str] | None = None,
) -> web.Response:
    headers = {"Content-Type": JSON, "X-Request-Id": request_id}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if extra:
        headers.update(extra)
    return web.Response(status=status, body=_error_body(code, message, request_id), headers=headers)


def from_router_error(exc: RouterError, request_id: str) -> web.Response:
    return error_response(
        exc.status, exc.code, exc.message, request_id, retry_after=exc.retry_after
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Everything that escapes a handler becomes the SPEC's JSON error body."""
    try:
        return await handler(request)
    except RouterError as exc:
        return from_router_error(exc, request_id_of(request.headers))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        request_id = request_id_of(request.headers)
        code = _HTTP_CODES.get(exc.status, "invalid_request" if exc.status < 500 else "internal")
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            return error_response(
                405,
                code,
                f"{request.method} is not allowed here; use {allowed}",
                request_id,
                extra={"Allow": allowed},
            )
        return error_response(exc.status, code, exc.reason, request_id)
    except Exception:  # the one place a broad catch belongs: never a traceback to the caller
        request_id = request_id_of(request.headers)
        log.exception("unhandled error request_id=%s path=%r", request_id, request.path)
        return error_response(500, "internal_error", "internal error; see logs", request_id)
