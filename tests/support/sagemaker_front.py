"""A SageMaker-Runtime-compatible HTTP front over MLServer: real inference for the ``sagemaker`` backend.

It speaks ``InvokeEndpoint`` as botocore sees it (service model ``sagemaker-runtime``
2017-05-13, protocol rest-json): ``POST /endpoints/{EndpointName}/invocations`` with the body as
the payload and the parameters in headers (``Content-Type``, ``Accept``,
``X-Amzn-SageMaker-Target-Model``, ``X-Amzn-SageMaker-Custom-Attributes``, ...). Like a real
multi-model endpoint it loads a TargetModel on its first request (``POST
/v2/repository/models/{m}/load`` on MLServer, standing in for the download from S3), optionally
slowed by ``load_delay_s``, and counts loads per model. TargetModel ``X`` or ``X.tar.gz`` maps to
MLServer model ``X``.

Answers (errors carry ``x-amzn-ErrorType`` and a JSON body, which botocore turns into
``ClientError.response["Error"]["Code"/"Message"]`` and, for modeled fields, top-level keys):

==========================================  ======  ============================  ==============
case                                        status  code                          retried by SDK
==========================================  ======  ============================  ==============
success                                     200     (body: MLServer's output)
no ``Authorization`` (unsigned)             403     MissingAuthenticationToken…   no
signature scoped to another service/region  403     InvalidSignatureException     no
``throttle_next(n)`` armed                  400     ThrottlingException           **yes**
``not_ready_next(n)`` armed                 429     ModelNotReadyException        no
unknown endpoint name                       400     ValidationError               no
no TargetModel header                       400     ValidationError               no
TargetModel not in the repository           400     ValidationError               no
MLServer answers 4xx/5xx (bad input: 500)   424     ModelError                    no
MLServer unreachable                        500     InternalFailure               **yes**
==========================================  ======  ============================  ==============

The ModelError body has ``OriginalStatusCode``, ``OriginalMessage`` and ``LogStreamArn``, which
botocore copies to the top level of ``ClientError.response``. Signatures themselves are not
verified (any dummy key works); their scope is.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .aws import ACCOUNT_ID, REGION

__all__ = ["RecordedRequest", "SageMakerFront", "start_sagemaker_front"]

TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's documented payload limit
_MODEL_TIMEOUT_S = 60.0  # SageMaker gives a container 60 s to answer


@dataclass(frozen=True)
class RecordedRequest:
    """One ``InvokeEndpoint`` call as the front received it, and the status it answered."""

    endpoint_name: str
    target_model: str | None
    headers: CIMultiDictProxy[str]
    body: bytes
    status: int
    method: str = "POST"
    path: str = ""  # as sent, percent-encoding included

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @property
    def accept(self) -> str | None:
        return self.headers.get("Accept")

    @property
    def custom_attributes(self) -> str | None:
        return self.headers.get(CUSTOM_ATTRIBUTES_HEADER)


def _error(status: int, code: str, body: dict[str, object]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "x-amzn-ErrorType": code,
            "x-amzn-RequestId": str(uuid.uuid4()),
        },
    )


def _validation_error(message: str) -> web.Response:
    return _error(400, "ValidationError", {"Message": message})


@dataclass
class SageMakerFront:
    """The front's state: configuration, injected faults and what it recorded."""

    mlserver_url: str
    endpoint_name: str
    region: str = REGION
    load_delay_s: float = 0.0
    url: str = field(default="", init=False)
    load_counts: Counter[str] = field(default_factory=Counter, init=False)
    requests: list[RecordedRequest] = field(default_factory=list, init=False, repr=False)
    answer_attributes: str | None = None  # custom attributes "the model" returns, when set
    _throttle: int = field(default=0, init=False, repr=False)
    _not_ready: int = field(default=0, init=False, repr=False)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False, repr=False)
    _http: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    # -- test controls -----------------------------------------------------------------------

    def throttle_next(self, n: int = 1) -> None:
        """Answer the next ``n`` requests with 400 ThrottlingException (botocore retries those)."""
        self._throttle = n

    def not_ready_next(self, n: int = 1) -> None:
        """Answer the next ``n`` requests with 429 ModelNotReadyException (a model still loading)."""
        self._not_ready = n

    def requests_for(self, target_model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.target_model == target_model]

    def reset_records(self) -> None:
        self.load_counts.clear()
        self.requests.clear()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=MAX_PAYLOAD_BYTES)
        app.router.add_post("/endpoints/{endpoint_name}/invocations", self._invoke)
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_MODEL_TIMEOUT_S, connect=5.0)
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        self.url = f"http://{host}:{bound_port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the operation -----------------------------------------------------------------------

    async def _invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["endpoint_name"]
        target = request.headers.get(TARGET_MODEL_HEADER)
        body = await request.read()
        status = 500
        try:
            response = await self._answer(request, name, target, body)
            status = response.status
            return response
        finally:
            self.requests.append(
                RecordedRequest(
                    endpoint_name=name,
                    target_model=target,
                    headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                    body=body,
                    status=status,
                    method=request.method,
                    path=request.raw_path,
                )
            )

    async def _answer(
        self, request: web.Request, name: str, target: str | None, body: bytes
    ) -> web.Response:
        denied = self._check_auth(request.headers.get("Authorization"))
        if denied is not None:
            return denied
        if self._throttle > 0:
            self._throttle -= 1
            return _error(400, "ThrottlingException", {"message": "Rate exceeded"})
        if self._not_ready > 0:
            self._not_ready -= 1
            return _error(
                429,
                "ModelNotReadyException",
                {"Message": "Model is not yet loaded; retry later."},
            )
        if name != self.endpoint_name:
            return _validation_error(f"Endpoint {name} of account {ACCOUNT_ID} not found.")
        if not target:
            return _validation_error(f"Request {uuid.uuid4()} is missing a target model header.")
        model = target.removesuffix(".tar.gz")

        forward = {
            k: v for k in ("Content-Type", "Accept") if (v := request.headers.get(k)) is not None
        }
        try:
            status, headers, payload = await self._infer(model, body, forward)
            if status == 404 and b"not found" in payload.lower():
                loaded = await self._lazy_load(model, target)
                if loaded is not None:
                    return loaded
                status, headers, payload = await self._infer(model, body, forward)
        except TimeoutError:
            return _error(
                424,
                "ModelError",
                {
                    "Message": "Your invocation timed out while waiting for a response from "
                    "container model. Review the latency metrics for each container in Amazon "
                    "CloudWatch, resolve the issue, and try again.",
                    "LogStreamArn": self._log_stream_arn(),
                },
            )
        except aiohttp.ClientError as exc:
            return _error(500, "InternalFailure", {"Message": f"An internal error occurred: {exc}"})
        if status >= 400:
            return self._model_error(status, payload)
        answer = {
            "Content-Type": headers.get("Content-Type", "application/json"),
            "x-Amzn-Invoked-Production-Variant": "AllTraffic",
            "x-amzn-RequestId": str(uuid.uuid4()),
        }
        if self.answer_attributes is not None:
            answer[CUSTOM_ATTRIBUTES_HEADER] = self.answer_attributes
        return web.Response(status=200, body=payload, headers=answer)

    def _check_auth(self, authorization: str | None) -> web.Response | None:
        if not authorization:
            return _error(
                403,
                "MissingAuthenticationTokenException",
                {"message": "Missing Authentication Token"},
            )
        # "AWS4-HMAC-SHA256 Credential=KEY/20260101/us-east-1/sagemaker/aws4_request, ..."
        try:
            scope = authorization.split("Credential=", 1)[1].split(",", 1)[0].split("/")
            region, service = scope[2], scope[3]
        except IndexError:
            return _error(
                403, "IncompleteSignatureException", {"message": "Invalid Authorization header"}
            )
        if service != "sagemaker":
            return _error(
                403,
                "InvalidSignatureException",
                {"message": "Credential should be scoped to correct service: 'sagemaker'. "},
            )
        if region != self.region:
            return _error(
                403,
                "InvalidSignatureException",
                {"message": "Credential should be scoped to a valid region. "},
            )
        return None

    def _log_stream_arn(self) -> str:
        return (
            f"arn:aws:logs:{self.region}:{ACCOUNT_ID}:log-group:"
            f"/aws/sagemaker/Endpoints/{self.endpoint_name}"
        )

    def _model_error(self, status: int, payload: bytes) -> web.Response:
        original = payload.decode("utf-8", errors="replace")
        kind = "client" if status < 500 else "server"
        console = (
            f"https://{self.region}.console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#logEventViewer:group=/aws/sagemaker/Endpoints/{self.endpoint_name}"
        )
        return _error(
            424,
            "ModelError",
            {
                "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
                "LogStreamArn": self._log_stream_arn(),
                "Message": (
                    f'Received {kind} error ({status}) from model with message "{original}". '
                    f"See {console} in account {ACCOUNT_ID} for more information."
                ),
                "OriginalMessage": original,
                "OriginalStatusCode": status,
            },
        )

    # -- MLServer ----------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("SageMakerFront is not started")
        return self._http

    def _model_url(self, model: str, suffix: str) -> str:
        quoted = urllib.parse.quote(model, safe="")
        return f"{self.mlserver_url}{suffix.format(model=quoted)}"

    async def _infer(
        self, model: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        async with self._session().post(
            self._model_url(model, "/v2/models/{model}/infer"),
            data=body,
            headers=headers,
            skip_auto_headers=() if "Content-Type" in headers else ("Content-Type",),
        ) as resp:
            return resp.status, resp.headers, await resp.read()

    async def _lazy_load(self, model: str, target: str) -> web.Response | None:
        """Load ``model`` once (concurrent first requests wait on one load); None when loaded."""
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            http = self._session()
            async with http.get(self._model_url(model, "/v2/models/{model}/ready")) as resp:
                if resp.status == 200:
                    return None  # another request loaded it meanwhile
            async with http.post(f"{self.mlserver_url}/v2/repository/index", json={}) as resp:
                index = await resp.json()
            if model not in {entry.get("name") for entry in index}:
                return _validation_error(
                    f"Failed to download model data(bucket: sagemaker-{self.region}-{ACCOUNT_ID}, "
                    f"key: {self.endpoint_name}/{target}). Please ensure that there is an object "
                    "located at the URL and that the role passed to CreateModel has permissions "
                    "to download the model."
                )
            if self.load_delay_s > 0:
                await asyncio.sleep(self.load_delay_s)
            async with http.post(
                self._model_url(model, "/v2/repository/models/{model}/load")
            ) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    return self._model_error(resp.status, payload)
            self.load_counts[model] += 1
        return None


async def start_sagemaker_front(
    mlserver_url: str,
    *,
    endpoint_name: str,
    port: int = 0,
    load_delay_s: float = 0.0,
    region: str = REGION,
) -> SageMakerFront:
    """Start a front for endpoint ``endpoint_name`` over the MLServer at ``mlserver_url``.

    Listens on 127.0.0.1 (``port=0``: a free port); ``.url`` is the ``endpoint_url`` to give
    aiobotocore. Await ``.close()`` when done.
    """
    front = SageMakerFront(
        mlserver_url=mlserver_url.rstrip("/"),
        endpoint_name=endpoint_name,
        region=region,
        load_delay_s=load_delay_s,
    )
    try:
        await front.start(port=port)
    except BaseException:
        await front.close()
        raise
    return front
