"""Amazon SageMaker multi-model endpoints through aiobotocore's ``sagemaker-runtime``.

Clients are created once per (region, endpoint_url) and held in an AsyncExitStack; credentials come
from the standard AWS chain (environment, profile, IRSA/instance role), never from config files. SDK
retries are off: the tenant's deadline is the only retry budget, spent here deliberately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from router.backends.base import Backend, UpstreamRequest, UpstreamResponse, attempt_budget
from router.errors import InvalidRequest, Overloaded, RouterError, UpstreamError, UpstreamTimeout

if TYPE_CHECKING:
    from types_aiobotocore_sagemaker.client import SageMakerClient
    from types_aiobotocore_sagemaker_runtime.client import SageMakerRuntimeClient

log = logging.getLogger(__name__)

MODEL_NOT_READY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8)
ClientKey = tuple[str, str | None]


class SageMakerClients:
    """One runtime (and, for the preloader, control-plane) client per region and endpoint_url."""

    def __init__(self, *, max_pool_connections: int = 256, session: AioSession | None = None):
        self._session = session or get_session()
        self._stack = contextlib.AsyncExitStack()
        self._runtime: dict[ClientKey, SageMakerRuntimeClient] = {}
        self._control: dict[ClientKey, SageMakerClient] = {}
        self._lock = asyncio.Lock()
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


def map_client_error(endpoint: str, model: str, exc: ClientError) -> RouterError:
    """SageMaker's error codes -> SPEC's. The caller never named the model, so a missing model is
    the operator's problem (502), while a model rejecting the input is the caller's (400)."""
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    message = error.get("Message", "") or str(exc)
    if code == "ModelError":
        original = exc.response.get("OriginalStatusCode")
        original_message = exc.response.get("OriginalMessage") or message
        if isinstance(original, int) and 400 <= original < 500:
            return InvalidRequest(f"the model rejected the input: {original_message}")
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
    return UpstreamError(f"endpoint {endpoint!r} failed ({code or 'unknown'}): {message}")


class SageMakerBackend(Backend):
    kind = "sagemaker"

    def __init__(
        self,
        name: str,
        *,
        endpoint_name: str,
        region: str,
        endpoint_url: str | None,
        clients: SageMakerClients,
        attempt_timeout_s: float,
        control_endpoint_url: str | None = None,
    ) -> None:
        self.name = name
        self.endpoint_name = endpoint_name
        self.region = region
        self.endpoint_url = endpoint_url
        # The control plane has its own VPC endpoint (api.sagemaker vs runtime.sagemaker).
        self.control_endpoint_url = control_endpoint_url or endpoint_url
        self.clients = clients
        self.attempt_timeout_s = attempt_timeout_s

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "endpoint_name": self.endpoint_name,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
        }

    async def invoke(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.on_request is not None:
            self.on_request(request.model)
        client = await self.clients.runtime(self.region, self.endpoint_url)
        kwargs: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "TargetModel": request.model,
            "Body": request.body,
            "ContentType": request.content_type,
        }
        if request.accept:
            kwargs["Accept"] = request.accept
        if request.custom_attributes:
            kwargs["CustomAttributes"] = request.custom_attributes
        cold = False
        backoff = iter(MODEL_NOT_READY_BACKOFF_S)
        while True:
            try:
                async with asyncio.timeout(
                    attempt_budget(self.attempt_timeout_s, request.deadline)
                ):
                    response = await client.invoke_endpoint(**kwargs)
                    body = await response["Body"].read()
                return UpstreamResponse(
                    body, response.get("ContentType") or "application/octet-stream", cold_start=cold
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                delay = next(backoff, None) if code == "ModelNotReadyException" else None
                if delay is None:
                    raise map_client_error(self.name, request.model, exc) from exc
                # The MME is loading the model: a cold start; wait within the tenant's deadline.
                cold = True
                if attempt_budget(delay, request.deadline) < delay:
                    raise UpstreamTimeout(
                        f"model {request.model!r} still loading on {self.name!r} at the deadline"
                    ) from exc
                await asyncio.sleep(delay)
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"endpoint {self.name!r} did not answer in time (attempt timeout "
                    f"{self.attempt_timeout_s:g}s, or the tenant's timeout)"
                ) from exc
            except EndpointConnectionError as exc:
                raise UpstreamError(f"endpoint {self.name!r} unreachable: {exc}") from exc
            except BotoCoreError as exc:
                raise UpstreamError(f"endpoint {self.name!r} failed: {exc}") from exc

    async def instance_count(self) -> int:
        """Current instances behind the endpoint, summed over its production variants."""
        client = await self.clients.control(self.region, self.control_endpoint_url)
        described = await client.describe_endpoint(EndpointName=self.endpoint_name)
        return sum(
            v.get("CurrentInstanceCount") or 0 for v in described.get("ProductionVariants", [])
        )
