"""The SageMaker-compatible front: ``POST /endpoints/{tenant}/invocations`` speaks InvokeEndpoint
(sagemaker-runtime 2017-05-13, rest-json), so an SDK client pointed at the router with the tenant id
as EndpointName works unchanged. The flow is the native one (``views.serve``); only the naming of
the request id and unit, the authentication and the shape of answers differ.

Error answers carry ``x-amzn-ErrorType`` and ``{"__type", "message"}``, which botocore turns into
the exceptions callers already handle (``client.exceptions.ModelError`` and friends).
"""

from __future__ import annotations

import re

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from router.assignment import DEFAULT_VARIANT, Assignment
from router.backends.sagemaker_wire import (
    CUSTOM_ATTRIBUTES,
    ERROR_TYPE,
    INFERENCE_ID,
    INVOKED_VARIANT,
)
from router.caller_headers import checked_unit, request_id_of, unit_id_of
from router.errors import (
    Forbidden,
    ModelFailed,
    ModelNotReady,
    ModelRejected,
    NotReady,
    Overloaded,
    RateLimited,
    RouterError,
    Unauthorized,
    UpstreamTimeout,
)
from router.routing import RoutingTable, TenantRoute
from router.sigv4_verify import (
    ALGORITHM,
    AwsForbidden,
    SigV4Verifier,
    parse_authorization,
    unrecognized,
)
from router.views import BodyCheck, Protocol, serve

TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
REQUEST_ID = "x-amzn-RequestId"
_ITEM_SEPARATORS = re.compile(r"[,;]")


def unit_from_attributes(attributes: str | None) -> str | None:
    """The ``unit=<id>`` item of the custom attributes (items separated by ``,`` or ``;``)."""
    if not attributes or "unit=" not in attributes:
        return None
    for item in _ITEM_SEPARATORS.split(attributes):
        name, sep, value = item.strip().partition("=")
        if sep and name.strip() == "unit":
            return value.strip() or None
    return None


def aws_error(
    status: int, code: str, message: str, request_id: str, **extra: object
) -> web.Response:
    body = orjson.dumps({"__type": code, "message": message, **extra})
    return web.Response(
        status=status,
        body=body,
        headers={"Content-Type": "application/json", ERROR_TYPE: code, REQUEST_ID: request_id},
    )


def aws_shape(exc: RouterError) -> tuple[int, str, dict[str, object]]:
    """(status, AWS error code, modeled fields) for one of the router's errors."""
    if isinstance(exc, AwsForbidden):
        return 403, exc.aws_code, {}
    if isinstance(exc, Unauthorized | Forbidden):
        return 403, "UnrecognizedClientException", {}
    if isinstance(exc, ModelRejected | ModelFailed):
        return (
            424,
            "ModelError",
            {"OriginalStatusCode": exc.original_status, "OriginalMessage": exc.original_message},
        )
    if isinstance(exc, ModelNotReady):
        return 429, "ModelNotReadyException", {}
    if isinstance(exc, UpstreamTimeout):
        return 424, "ModelError", {}  # SageMaker's own answer when a container is too slow
    if isinstance(exc, RateLimited):  # over the tenant's rate or concurrency
        return 429, "ThrottlingException", {}
    if isinstance(exc, NotReady | Overloaded):  # shedding load, or the MME throttles us
        return 503, "ServiceUnavailable", {}
    if exc.status < 500:  # bad input, unknown tenant (endpoint), too large, too slow a body
        return 400, "ValidationError", {}
    return 500, "InternalFailure", {}


class SageMakerProtocol(Protocol):
    def __init__(self) -> None:
        self.verifier = SigV4Verifier()

    def request_id(self, headers: CIMultiDictProxy[str]) -> str:
        return request_id_of(headers, INFERENCE_ID)

    def unit(self, headers: CIMultiDictProxy[str]) -> str | None:
        unit = unit_id_of(headers)
        if unit is None:
            return checked_unit(unit_from_attributes(headers.get(CUSTOM_ATTRIBUTES)), "unit=")
        return unit

    def authorize(
        self, request: web.Request, route: TenantRoute, table: RoutingTable
    ) -> BodyCheck | None:
        headers = request.headers
        self._check_targets(headers, route)
        authorization = headers.get("Authorization")
        if authorization is not None and authorization.startswith(ALGORITHM):
            if not route.aws_secrets:
                if route.api_keys:
                    raise unrecognized("this endpoint accepts no AWS credentials; send its API key")
                return None  # a tenant without keys (sidecar mode): any signature will do
            signed = parse_authorization(authorization)
            secret = self.verifier.check_header(signed, route.aws_secrets)
            url = f"http://{headers.get('Host', '')}{request.raw_path}"
            method = request.method
            verifier = self.verifier

            def verify(body: bytes) -> None:
                verifier.verify(signed, secret, method=method, url=url, headers=headers, body=body)

            return verify
        if route.aws_secrets and not route.api_keys:
            raise unrecognized("missing AWS SigV4 signature")
        return super().authorize(request, route, table)

    @staticmethod
    def _check_targets(headers: CIMultiDictProxy[str], route: TenantRoute) -> None:
        """TargetModel and TargetVariant may be sent, but only naming this tenant's own models and
        variants: checked, never obeyed (the tenant's config and bucket decide)."""
        target = headers.get(TARGET_MODEL)
        if target is not None and target not in route.config.models():
            raise AwsForbidden(
                "AccessDeniedException", f"TargetModel {target!r} is not a model of this endpoint"
            )
        variant = headers.get(TARGET_VARIANT)
        if variant is not None:
            experiment = route.config.experiment
            names = {v.name for v in experiment.variants} if experiment else {DEFAULT_VARIANT}
            if variant not in names:
                raise AwsForbidden(
                    "AccessDeniedException",
                    f"TargetVariant {variant!r} is not a variant of this endpoint",
                )

    def success(
        self,
        body: bytes,
        content_type: str,
        assignment: Assignment,
        request_id: str,
        custom_attributes: str | None,
    ) -> web.Response:
        headers = {
            "Content-Type": content_type,
            INVOKED_VARIANT: assignment.variant,
            REQUEST_ID: request_id,
            "X-Model-Id": assignment.model,
        }
        if custom_attributes:
            headers[CUSTOM_ATTRIBUTES] = custom_attributes
        return web.Response(body=body, headers=headers)

    def error(
        self, exc: RouterError, request_id: str, assignment: Assignment | None
    ) -> web.Response:
        status, code, extra = aws_shape(exc)
        response = aws_error(status, code, exc.message, request_id, **extra)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if assignment is not None:
            response.headers[INVOKED_VARIANT] = assignment.variant
        return response

    def internal_error(self, request_id: str) -> web.Response:
        return aws_error(500, "InternalFailure", "An internal error occurred; see logs", request_id)


SAGEMAKER = SageMakerProtocol()


async def invoke_endpoint(request: web.Request) -> web.StreamResponse:
    """``POST /endpoints/{tenant}/invocations``: the tenant id is the EndpointName."""
    return await serve(request, SAGEMAKER)
