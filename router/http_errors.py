"""JSON error bodies and the middleware that guarantees no request ends in a bare 500."""

from __future__ import annotations

import itertools
import logging
import math
import os

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from router.errors import RouterError

log = logging.getLogger(__name__)

JSON = "application/json"


_ID_PREFIX = os.urandom(6).hex()  # per process: ids stay unique across replicas
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A random per-process prefix and a counter: unique, and no system call per request."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


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
    body = orjson.dumps({"error": {"code": code, "message": message, "request_id": request_id}})
    return web.Response(status=status, body=body, headers=headers)


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
        return from_router_error(exc, request.headers.get("X-Request-Id") or new_request_id())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        request_id = request.headers.get("X-Request-Id") or new_request_id()
        code = _HTTP_CODES.get(exc.status, "invalid_request" if exc.status < 500 else "internal")
        return error_response(exc.status, code, exc.reason, request_id)
    except Exception:  # the one place a broad catch belongs: never a traceback to the caller
        request_id = request.headers.get("X-Request-Id") or new_request_id()
        log.exception("unhandled error request_id=%s path=%s", request_id, request.path)
        return error_response(500, "internal_error", "internal error; see logs", request_id)
