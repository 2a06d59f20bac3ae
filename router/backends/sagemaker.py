"""Amazon SageMaker multi-model endpoints.

InvokeEndpoint goes out on a pooled aiohttp session, signed with botocore's SigV4 signer
(``sagemaker_wire``): aiobotocore's request pipeline (event hooks, model-driven serialisation and
parsing) cost about three times the rest of the router per request. aiobotocore still does what it
does best: the credential chain with refresh (environment, profile, IRSA web identity, instance
role), region and endpoint resolution, and the control plane (DescribeEndpoint).

Clients are created once per (region, endpoint_url); credentials never come from config files. No
SDK retries: the tenant's deadline is the only retry budget, spent here deliberately.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import aiohttp
import botocore
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioCredentials
from aiobotocore.session import AioSession, get_session
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import BotoCoreError, ClientError

from router.backends.base import Backend, UpstreamRequest, UpstreamResponse, attempt_budget
from router.backends.sagemaker_wire import (
    CUSTOM_ATTRIBUTES,
    ERROR_TYPE,
    INFERENCE_ID,
    INVOKED_VARIANT,
    TARGET_MODEL,
    PooledSigV4Auth,
    SageMakerError,
    SigningRequest,
    host_header,
    parse_error,
)
from router.errors import (
    InvalidRequest,
    ModelFailed,
    ModelNotReady,
    ModelRejected,
    Overloaded,
    RouterError,
    UpstreamError,
    UpstreamTimeout,
)
from router.placement import rank

if TYPE_CHECKING:
    from types_aiobotocore_sagemaker.client import SageMakerClient
    from types_aiobotocore_sagemaker_runtime.client import SageMakerRuntimeClient

log = logging.getLogger(__name__)

MODEL_NOT_READY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8)
USER_AGENT = f"warmroute/0.1 botocore/{botocore.__version__}"
ClientKey = tuple[str, str | None]
MAX_CACHED_URLS = 100_000  # model -> URL; past it, URLs are built per call
# amz-sdk-invocation-id is UUID-shaped: a random per-process part and a counter (no syscall per call).
_INVOCATION_PREFIX = str(uuid.uuid4())[:24]
_INVOCATIONS = itertools.count()


def invocation_id() -> str:
    return f"{_INVOCATION_PREFIX}{next(_INVOCATIONS) % 16**12:012x}"


class SageMakerClients:
    """One runtime (and, for the preloader, control-plane) client per region and endpoint_url, the
    credential chain, and the HTTP session InvokeEndpoint goes out on (the router's pooled one; the
    preloader lets this object open its own)."""

    def __init__(
        self,
        *,
        max_pool_connections: int = 256,
        session: AioSession | None = None,
        http: aiohttp.ClientSession | None = None,
    ):
        self._session = session or get_session()
        self._stack = contextlib.AsyncExitStack()
        self._runtime: dict[ClientKey, SageMakerRuntimeClient] = {}
        self._control: dict[ClientKey, SageMakerClient] = {}
        self._lock = asyncio.Lock()
        self._http = http
        self._own_http = http is None
        self._max_pool_connections = max_pool_connections
        self._credentials: AioCredentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._frozen_at = 0.0
        self._config = AioConfig(
            max_pool_connections=max_pool_connections,
            connect_timeout=5,
            read_timeout=120,
            retries={"total_max_attempts": 1, "mode": "standard"},
            tcp_keepalive=True,
        )
        # The control plane (DescribeEndpoint) is off the request path: a few standard retries.
        self._control_config = AioConfig(
            connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
        )

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self._max_pool_connections, keepalive_timeout=30
            )
            self._http = aiohttp.ClientSession(
                connector=connector, skip_auto_headers=("User-Agent",), auto_decompress=False
            )
        return self._http

    async def credentials(self) -> ReadOnlyCredentials:
        """The chain's current credentials (refreshed by aiobotocore when they near expiry; asked
        at most once a second: refreshable credentials refresh minutes before they expire)."""
        now = time.monotonic()
        if self._frozen is not None and now - self._frozen_at < 1.0:
            return self._frozen
        if self._credentials is None:
            async with self._lock:
                if self._credentials is None:
                    self._credentials = await self._session.get_credentials()
        if self._credentials is None:
            raise UpstreamError("no AWS credentials found (environment, profile or role)")
        frozen: ReadOnlyCredentials = await self._credentials.get_frozen_credentials()
        self._frozen, self._frozen_at = frozen, now
        return frozen

    async def runtime(self, region: str, endpoint_url: str | None) -> SageMakerRuntimeClient:
        key = (region, endpoint_url)
        client = self._runtime.get(key)
        if client is None:
            async with self._lock:
                client = self._runtime.get(key)
                if client is None:
                    client = await self._stack.enter_async_context(
                        self._session.create_client(
                            "sagemaker-runtime",
                            region_name=region,
                            endpoint_url=endpoint_url,
                            config=self._config,
                        )
                    )
                    self._runtime[key] = client
        return client

    async def control(self, region: str, endpoint_url: str | None) -> SageMakerClient:
        key = (region, endpoint_url)
        client = self._control.get(key)
        if client is None:
            async with self._lock:
                client = self._control.get(key)
                if client is None:
                    client = await self._stack.enter_async_context(
                        self._session.create_client(
                            "sagemaker",
                            region_name=region,
                            endpoint_url=endpoint_url,
                            config=self._control_config,
                        )
                    )
                    self._control[key] = client
        return client

    async def aclose(self) -> None:
        await self._stack.aclose()
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None


def map_error(endpoint: str, model: str, error: SageMakerError) -> RouterError:
    """SageMaker's error codes -> SPEC's. The caller never named the model, so a missing model is
    the operator's problem (502), while a model rejecting the input is the caller's (400)."""
    code, message = error.code, error.message
    if code == "ModelError":
        original = error.original_status
        original_message = error.original_message or message
        if original is not None and 400 <= original < 500:
            return ModelRejected(
                f"the model rejected the input: {original_message}",
                original_status=original,
                original_message=original_message,
            )
        if original is not None:
            return ModelFailed(
                f"model {model!r} failed: {original_message}",
                original_status=original,
                original_message=original_message,
            )
        return UpstreamError(f"model {model!r} failed: {original_message}")
    if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
        return Overloaded(f"endpoint {endpoint!r} is throttling: {message}", retry_after=1)
    if code == "ValidationError":
        lowered = message.lower()
        if "endpoint" in lowered and "not found" in lowered:
            return UpstreamError(f"endpoint {endpoint!r} not found: {message}")
        if "model" in lowered or "download" in lowered or "targetmodel" in lowered:
            return UpstreamError(f"model {model!r} is not available: {message}")
        return InvalidRequest(f"the endpoint rejected the request: {message}")
    return UpstreamError(f"endpoint {endpoint!r} failed ({code}): {message}")


def map_client_error(endpoint: str, model: str, exc: ClientError) -> RouterError:
    """The same mapping for an aiobotocore ``ClientError`` (control plane, tests)."""
    response: Any = exc.response
    error = response.get("Error", {})
    original = response.get("OriginalStatusCode")
    return map_error(
        endpoint,
        model,
        SageMakerError(
            status=int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0),
            code=error.get("Code", ""),
            message=error.get("Message", "") or str(exc),
            original_status=original if isinstance(original, int) else None,
            original_message=response.get("OriginalMessage"),
        ),
    )


class SageMakerBackend(Backend):
    kind = "sagemaker"

    def __init__(
        self,
        name: str,
        *,
        endpoint_name: str = "",
        endpoint_names: Sequence[str] = (),
        region: str,
        endpoint_url: str | None,
        clients: SageMakerClients,
        attempt_timeout_s: float,
        control_endpoint_url: str | None = None,
    ) -> None:
        self.name = name
        # One MME, or a pool: each model goes to the first member of its rendezvous ranking
        # (router/placement.py), so each member's working set is its share of the models.
        self.members = tuple(endpoint_names) or (endpoint_name,)
        self.endpoint_name = ",".join(self.members)  # for logs
        self.region = region
        self.endpoint_url = endpoint_url
        # The control plane has its own VPC endpoint (api.sagemaker vs runtime.sagemaker).
        self.control_endpoint_url = control_endpoint_url or endpoint_url
        self.clients = clients
        self.attempt_timeout_s = attempt_timeout_s
        self._base: str | None = None  # the runtime URL, resolved by aiobotocore on first use
        self._host = ""
        self._urls: dict[str, str] = {}  # model -> its member's invocations URL
        self._signer: PooledSigV4Auth | None = None
        self._timeout = aiohttp.ClientTimeout(total=attempt_timeout_s)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "endpoint_name": self.endpoint_name,
            "endpoint_names": list(self.members),
            "region": self.region,
            "endpoint_url": self.endpoint_url,
        }

    def member_for(self, model: str) -> str:
        """The pool member that holds ``model`` (the only member of a single endpoint)."""
        if len(self.members) == 1:
            return self.members[0]
        return rank(model, self.members)[0]

    async def _url_for(self, model: str) -> str:
        base = self._base
        if base is None:
            # aiobotocore's endpoint resolution (partitions, FIPS/dual-stack settings, the override).
            client = await self.clients.runtime(self.region, self.endpoint_url)
            base = self._base = client.meta.endpoint_url.rstrip("/")
            self._host = host_header(base)
        url = f"{base}/endpoints/{quote(self.member_for(model), safe='')}/invocations"
        if len(self._urls) < MAX_CACHED_URLS:
            self._urls[model] = url
        return url

    async def _signer_for(self) -> PooledSigV4Auth:
        credentials = await self.clients.credentials()
        signer = self._signer
        if signer is None or signer.credentials != credentials:  # first use, or refreshed
            signer = self._signer = PooledSigV4Auth(credentials, self.region, self._host)
        return signer

    def _headers(self, request: UpstreamRequest) -> dict[str, str]:
        # The order and names aiobotocore's client sends (checked by the wire-identity test).
        headers = {TARGET_MODEL: request.model, "Content-Type": request.content_type}
        if request.accept:
            headers["Accept"] = request.accept
        if request.custom_attributes:
            headers[CUSTOM_ATTRIBUTES] = request.custom_attributes
        headers[INFERENCE_ID] = request.request_id
        return headers

    async def invoke(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.on_request is not None:
            self.on_request(request.model)
        url = self._urls.get(request.model) or await self._url_for(request.model)
        http = self.clients.http()
        cold = False
        backoff = iter(MODEL_NOT_READY_BACKOFF_S)
        attempt = 0
        while True:
            attempt += 1
            signing = SigningRequest("POST", url, self._headers(request), request.body)
            budget = attempt_budget(self.attempt_timeout_s, request.deadline)
            try:
                # SigV4Auth reads and writes only what SigningRequest has of an AWSRequest.
                (await self._signer_for()).add_auth(cast(AWSRequest, signing))
                headers = signing.headers
                headers["User-Agent"] = USER_AGENT
                headers["amz-sdk-invocation-id"] = invocation_id()
                headers["amz-sdk-request"] = f"attempt={attempt}"
                headers["Accept-Encoding"] = "identity"
                if budget <= 0:
                    raise TimeoutError
                timeout = (
                    self._timeout
                    if budget >= self.attempt_timeout_s
                    else aiohttp.ClientTimeout(total=budget)
                )
                async with http.post(
                    url,
                    data=request.body,
                    headers=headers,
                    timeout=timeout,
                ) as r:
                    answer = await r.read()
                    if r.status == 200:
                        return UpstreamResponse(
                            answer,
                            r.headers.get("Content-Type") or "application/octet-stream",
                            cold_start=cold,
                            custom_attributes=r.headers.get(CUSTOM_ATTRIBUTES),
                            variant=r.headers.get(INVOKED_VARIANT),
                        )
                    error = parse_error(r.status, r.headers.get(ERROR_TYPE), answer)
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"endpoint {self.name!r} did not answer in time (attempt timeout "
                    f"{self.attempt_timeout_s:g}s, or the tenant's timeout)"
                ) from exc
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamError(f"endpoint {self.name!r} unreachable: {exc}") from exc
            except (aiohttp.ClientError, BotoCoreError) as exc:
                raise UpstreamError(f"endpoint {self.name!r} failed: {exc}") from exc
            if error.code != "ModelNotReadyException":
                raise map_error(self.name, request.model, error)
            # The MME is loading the model: a cold start; wait within the tenant's deadline.
            cold = True
            delay = next(backoff, None)
            if delay is None or attempt_budget(delay, request.deadline) < delay:
                raise ModelNotReady(
                    f"model {request.model!r} still loading on {self.name!r} at the deadline"
                )
            await asyncio.sleep(delay)

    async def instance_count(self) -> int:
        """Current instances behind the endpoint, summed over its production variants; for a pool,
        the largest member's (each model is warmed that many times, on its own member)."""
        client = await self.clients.control(self.region, self.control_endpoint_url)
        counts = []
        for member in self.members:
            described = await client.describe_endpoint(EndpointName=member)
            counts.append(
                sum(
                    v.get("CurrentInstanceCount") or 0
                    for v in described.get("ProductionVariants", [])
                )
            )
        return max(counts)
