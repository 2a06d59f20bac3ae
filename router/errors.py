"""One error root; each subclass carries the HTTP status and the SPEC error code.

The error middleware turns any of these into ``{"error": {"code", "message", "request_id"}}``.
"""

from __future__ import annotations

import asyncio


class RouterError(Exception):
    status: int = 502
    code: str = "upstream_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidRequest(RouterError):
    status, code = 400, "invalid_request"


class Unauthorized(RouterError):
    status, code = 401, "unauthorized"


class Forbidden(RouterError):
    status, code = 403, "forbidden"


class TenantNotFound(RouterError):
    status, code = 404, "tenant_not_found"


class NotFound(RouterError):
    status, code = 404, "not_found"


class RequestTimeout(RouterError):
    status, code = 408, "request_timeout"


class PayloadTooLarge(RouterError):
    status, code = 413, "payload_too_large"


class HeadersTooLarge(RouterError):
    status, code = 431, "headers_too_large"


class RateLimited(RouterError):
    status, code = 429, "rate_limited"


class UpstreamError(RouterError):
    status, code = 502, "upstream_error"


class CallerGone(RouterError):
    """The caller closed the connection: nobody reads the answer; counted as 499, not an error."""

    status, code = 499, "client_closed_request"


class NotReady(RouterError):
    status, code = 503, "not_ready"


class Overloaded(RouterError):
    status, code = 503, "overloaded"


class UpstreamTimeout(RouterError, asyncio.TimeoutError):
    status, code = 504, "upstream_timeout"


class ModelRejected(InvalidRequest):
    """The model answered 4xx: the caller's input (SageMaker front: ModelError)."""

    def __init__(self, message: str, *, original_status: int, original_message: str) -> None:
        super().__init__(message)
        self.original_status = original_status
        self.original_message = original_message


class ModelFailed(UpstreamError):
    """The model answered 5xx (SageMaker front: ModelError with the model's status)."""

    def __init__(self, message: str, *, original_status: int, original_message: str) -> None:
        super().__init__(message)
        self.original_status = original_status
        self.original_message = original_message


class ModelNotReady(UpstreamTimeout):
    """The model was still loading at the deadline (SageMaker front: ModelNotReadyException)."""
