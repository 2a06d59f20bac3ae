"""Open Inference Protocol (v2) endpoints: Triton, MLServer, KServe.

One pooled aiohttp session per process serves every instance. A model the instance does not know is
loaded there and the request retried once (the lazy load a real MME does); concurrent requests for the
same cold model share one load.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from router.backends.base import Backend, UpstreamRequest, UpstreamResponse, attempt_budget
from router.backends.discovery import resolve_instances
from router.backends.ejection import Ejector
from router.backends.retry_budget import RetryBudget
from router.errors import (
    ModelFailed,
    ModelRejected,
    Overloaded,
    RouterError,
    UpstreamError,
    UpstreamTimeout,
)
from router.loops import cancel_and_wait
from router.upstream_log import Failure, FailureLog
from tenancy.models import Discovery

log = logging.getLogger(__name__)

MAX_MESSAGE = 500
LARGE_BODY = 1 << 20
# Upstream 4xx answers about the router's own request, not the caller's input.
_NOT_THE_CALLERS_FAULT = frozenset({401, 403, 404, 405, 407})


def upstream_message(body: bytes) -> str:
    """The human part of an upstream error body (MLServer/Triton: {"error": "..."}), truncated."""
    text = body[:4096].decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(parsed, dict):
                for key in ("error", "message", "detail"):
                    value = parsed.get(key)
                    if isinstance(value, str):
                        text = value
                        break
    return text[:MAX_MESSAGE] or "no message"


_MISSING_PHRASES = (b"not found", b"unknown model", b"does not exist", b"not ready", b"unavailable")


def is_model_missing(status: int, body: bytes, model: str) -> bool:
    """True only when the server says, naming ``model``, that it does not have it loaded.

    MLServer and KServe answer 404 ``Model X not found``; Triton 400/503 ``Request for unknown model:
    'X' is not found`` / ``... is not ready``. Any other 404 (a wrong path, a proxy's page) must not
    trigger a load: it would only hide a misconfiguration behind a second failure.
    """
    if status not in (404, 400, 503):
        return False
    text = body[:1024].lower()
    return model.lower().encode() in text and any(p in text for p in _MISSING_PHRASES)


class V2Instance:
    """One server of a v2 endpoint: inference plus the repository API the preloader uses."""

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession, *, timeout: aiohttp.ClientTimeout
    ) -> None:
        self.url = base_url.rstrip("/")
        self._session = session
        self._timeout = timeout
        self._infer_urls: dict[str, URL] = {}
        # Passive health (router/backends/ejection.py): consecutive failures, ejected until when.
        self.failures = 0
        self.ejected_until = 0.0
        self.outstanding = 0  # requests in flight here (placement spreads by it)
        self.last_used: dict[str, float] = {}  # model -> monotonic time of its last request here

    def __repr__(self) -> str:
        return f"V2Instance({self.url})"

    def _model_url(self, model: str, action: str) -> URL:
        return URL(f"{self.url}/v2/{action.format(quote(model, safe=''))}", encoded=True)

    async def infer(
        self,
        model: str,
        body: bytes,
        headers: dict[str, str],
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, bytes, str]:
        url = self._infer_urls.get(model)
        if url is None:
            url = self._infer_urls[model] = self._model_url(model, "models/{}/infer")
        # aiohttp writes large bytes bodies in one blocking call (and warns): stream those instead.
        data: bytes | io.BytesIO = body if len(body) < LARGE_BODY else io.BytesIO(body)
        async with self._session.post(
            url, data=data, headers=headers, timeout=client_timeout or self._timeout
        ) as r:
            return r.status, await r.read(), r.headers.get("Content-Type", "application/json")

    async def load(self, model: str, *, timeout_s: float = 60.0) -> None:
        """Load ``model``; raise UpstreamError with the server's reason when it cannot."""
        url = self._model_url(model, "repository/models/{}/load")
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.post(url, timeout=timeout) as resp:
                if resp.status != 200:
                    reason = upstream_message(await resp.read())
                    raise UpstreamError(f"model {model!r} cannot be loaded on {self.url}: {reason}")
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"loading {model!r} on {self.url} failed: {exc}") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"loading {model!r} on {self.url} timed out") from exc

    async def unload(self, model: str) -> None:
        url = self._model_url(model, "repository/models/{}/unload")
        async with self._session.post(url, timeout=self._timeout) as resp:
            if resp.status not in (200, 404):
                raise UpstreamError(f"unloading {model!r} on {self.url}: {resp.status}")

    async def index(self) -> dict[str, str]:
        """model name -> state (``READY``, ``UNAVAILABLE``, ...) from the repository index."""
        url = URL(f"{self.url}/v2/repository/index", encoded=True)
        async with self._session.post(
            url, data=b"{}", headers={"Content-Type": "application/json"}, timeout=self._timeout
        ) as resp:
            if resp.status != 200:
                raise UpstreamError(f"repository index on {self.url}: HTTP {resp.status}")
            entries = orjson.loads(await resp.read())
        found: dict[str, str] = {}
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                found[entry["name"]] = str(entry.get("state", "")).upper()
        return found

    async def ready(self) -> bool:
        try:
            url = URL(f"{self.url}/v2/health/ready", encoded=True)
            async with self._session.get(url, timeout=self._timeout) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


class InstancePicker:
    """Which instance serves a model: the one seam instance selection goes through.

    Round robin, preferring (1) instances not ejected, then (2) instances where the model is warm
    when a warm map (the preloader's published state) is known. ``avoid`` is the instance a retry
    must not go back to.
    """

    def __init__(self, warm: Callable[[str], frozenset[str]] | None = None) -> None:
        self._turn = 0
        self._warm = warm

    def choose(
        self,
        model: str,
        instances: Sequence[V2Instance],
        *,
        now: float,
        avoid: V2Instance | None = None,
    ) -> V2Instance | None:
        """The instance to try next, or None when there is none but ``avoid``."""
        n = len(instances)
        warm = (self._warm(model) or None) if self._warm is not None else None
        start = self._turn
        if avoid is None:  # a retry does not move the rotation on
            self._turn = (start + 1) % n
        best: V2Instance | None = None
        best_rank = 4
        for k in range(n):
            instance = instances[(start + k) % n]
            if instance is avoid:
                continue
            rank = (instance.ejected_until > now) * 2 + (
                warm is not None and instance.url not in warm
            )
            if rank == 0:
                return instance
            if rank < best_rank:
                best, best_rank = instance, rank
        return best


class _ConnectionFailed(Exception):
    """The attempt failed before any response byte: safe to send again elsewhere."""

    def __init__(self, reason: str, error: RouterError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def _connection_reason(exc: aiohttp.ClientError) -> str | None:
    """``refused``/``disconnected``/``reset`` when nothing was answered yet, else None."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientOSError):
        return "reset"
    return None


class V2Backend(Backend):
    kind = "v2"

    def __init__(
        self,
        name: str,
        instances: Sequence[V2Instance],
        *,
        attempt_timeout_s: float,
        picker: InstancePicker | None = None,
        on_load: Callable[[str, str], None] | None = None,
        discovery: Discovery | None = None,
        make_instance: Callable[[str], V2Instance] | None = None,
        retry_budget: RetryBudget | None = None,
        ejector: Ejector | None = None,
        failure_log: FailureLog | None = None,
        on_retry: Callable[[str], None] | None = None,
        make_room: Callable[[V2Instance, str], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.instances: list[V2Instance] = list(instances)
        self.attempt_timeout_s = attempt_timeout_s
        self.picker = picker or InstancePicker()
        self._loads: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._on_load = on_load
        self.discovery = discovery
        self._make_instance = make_instance
        self._make_room = make_room
        self._discovery_task: asyncio.Task[None] | None = None
        self.retry_budget = retry_budget or RetryBudget()
        self.ejector = ejector or Ejector()
        self.failure_log = failure_log or FailureLog()
        self._on_retry = on_retry

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "kind": self.kind,
            "instances": [i.url for i in self.instances],
        }
        if self.discovery is not None:
            described["discovery"] = self.discovery.model_dump()
        return described

    def set_urls(self, urls: Sequence[str]) -> None:
        """Replace the instance list, keeping the objects (and their state) of known URLs."""
        assert self._make_instance is not None
        known = {i.url: i for i in self.instances}
        self.instances = [known.get(u.rstrip("/")) or self._make_instance(u) for u in urls]

    async def refresh_instances(self) -> None:
        if self.discovery is None:
            return
        urls = await resolve_instances(self.discovery)
        if urls != [i.url for i in self.instances]:
            log.info("endpoint=%s instances=%s", self.name, ",".join(urls) or "none")
        self.set_urls(urls)

    async def _discover(self) -> None:
        assert self.discovery is not None
        while True:
            try:
                await self.refresh_instances()
            except OSError as exc:  # socket.gaierror: keep the last known instances
                log.warning("endpoint=%s discovery failed: %s", self.name, exc)
            await asyncio.sleep(self.discovery.interval_s)

    def start(self) -> None:
        if self.discovery is not None and self._discovery_task is None:
            self._discovery_task = asyncio.create_task(
                self._discover(), name=f"discover {self.name}"
            )

    async def aclose(self) -> None:
        task, self._discovery_task = self._discovery_task, None
        if task is not None:
            await cancel_and_wait([task])

    async def ensure_loaded(
        self, instance: V2Instance, model: str, deadline: float | None = None
    ) -> None:
        """Load ``model`` on ``instance`` once, however many requests wait for it.

        The load runs in its own task and waiters are shielded, so a caller whose deadline passes
        stops waiting without aborting a load the next caller will need.
        """
        key = (instance.url, model)
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(
                self._load(instance, model), name=f"load {model} on {instance.url}"
            )
            self._loads[key] = task
            task.add_done_callback(lambda t: self._load_done(key, t))
            if self._on_load is not None:
                self._on_load(instance.url, model)
        if deadline is None:
            await asyncio.shield(task)
            return
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await asyncio.shield(task)

    def _load_done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._loads.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have left (deadline) before it ended

    async def _load(self, instance: V2Instance, model: str) -> None:
        if self._make_room is not None:
            await self._make_room(instance, model)
        await instance.load(model)

    async def invoke(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.on_request is not None:
            self.on_request(request.model)
        instances = self.instances
        if not instances:
            raise UpstreamError(f"endpoint {self.name!r} has no instances")
        self.retry_budget.record_request()
        headers = {"Content-Type": request.content_type, "X-Request-Id": request.request_id}
        if request.accept:
            headers["Accept"] = request.accept
        instance = self.picker.choose(request.model, instances, now=time.monotonic())
        assert instance is not None
        try:
            return await self._attempt(instance, request, headers)
        except _ConnectionFailed as failed:
            # Nothing was answered: once, on another instance, within the deadline and budget.
            now = time.monotonic()
            retry = self.picker.choose(request.model, instances, now=now, avoid=instance)
            if retry is None or retry.ejected_until > now or not self.retry_budget.try_spend():
                raise failed.error from None
            if self._on_retry is not None:
                self._on_retry(failed.reason)
        try:
            return await self._attempt(retry, request, headers)
        except _ConnectionFailed as failed_again:
            raise failed_again.error from None

    async def _attempt(
        self, instance: V2Instance, request: UpstreamRequest, headers: dict[str, str]
    ) -> UpstreamResponse:
        """One attempt on ``instance``, its outcome recorded in the instance's health."""
        try:
            response = await self._invoke_on(instance, request, headers)
        except _ConnectionFailed as failed:
            self._failed(instance, request, "unreachable", failed.reason, str(failed.error))
            raise
        except UpstreamTimeout as exc:
            self._failed(instance, request, "timeout", "timeout", exc.message)
            raise
        except RouterError:
            self.ejector.succeeded(instance)  # it answered (an error): reachable and alive
            raise
        self.ejector.succeeded(instance)
        return response

    def _failed(
        self, instance: V2Instance, request: UpstreamRequest, kind: str, status: str, detail: str
    ) -> None:
        if self.ejector.failed(instance, self.instances, time.monotonic()):
            log.warning(
                "instance ejected endpoint=%s instance=%s failures=%d for_s=%g",
                self.name,
                instance.url,
                instance.failures,
                self.ejector.eject_for_s,
            )
        self._log_failure(instance, request, kind, status, detail)

    def _log_failure(
        self,
        instance: V2Instance,
        request: UpstreamRequest,
        kind: str,
        status: int | str,
        body: bytes | str,
    ) -> None:
        self.failure_log.warn(
            Failure(
                kind=kind,
                endpoint=self.name,
                instance=instance.url,
                request_id=request.request_id,
                tenant=request.tenant,
                model=request.model,
                status=status,
                body=body,
            )
        )

    def _timeout(self, deadline: float | None) -> aiohttp.ClientTimeout | None:
        """None (the instance's preset timeout) unless the request's deadline is tighter."""
        budget = attempt_budget(self.attempt_timeout_s, deadline)
        if budget >= self.attempt_timeout_s:
            return None
        if budget <= 0:
            raise UpstreamTimeout(
                f"no time left for endpoint {self.name!r} within the tenant's timeout"
            )
        return aiohttp.ClientTimeout(total=budget)

    async def _invoke_on(
        self, instance: V2Instance, request: UpstreamRequest, headers: dict[str, str]
    ) -> UpstreamResponse:
        cold = False
        model, body, deadline = request.model, request.body, request.deadline
        instance.outstanding += 1
        instance.last_used[model] = time.monotonic()
        try:
            status, answer, content_type = await instance.infer(
                model, body, headers, self._timeout(deadline)
            )
            if status != 200 and is_model_missing(status, answer, model):
                cold = True
                await self.ensure_loaded(instance, model, deadline)
                status, answer, content_type = await instance.infer(
                    model, body, headers, self._timeout(deadline)
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"endpoint {self.name!r} did not answer in time (attempt timeout "
                f"{self.attempt_timeout_s:g}s, or the tenant's timeout)"
            ) from exc
        except aiohttp.ClientError as exc:
            reason = _connection_reason(exc)
            if reason is not None:
                raise _ConnectionFailed(
                    reason, UpstreamError(f"instance {instance.url} unreachable ({reason}): {exc}")
                ) from exc
            self._log_failure(instance, request, "broken_answer", "-", str(exc))
            raise UpstreamError(f"endpoint {self.name!r} failed: {exc}") from exc
        finally:
            instance.outstanding -= 1
        if status == 200:
            return UpstreamResponse(answer, content_type, cold_start=cold, instance=instance.url)
        self._refuse(instance, request, status, answer)

    def _refuse(
        self, instance: V2Instance, request: UpstreamRequest, status: int, answer: bytes
    ) -> NoReturn:
        """Raise the SPEC's error for a non-200 answer."""
        model = request.model
        message = upstream_message(answer)
        if is_model_missing(status, answer, model):
            self._log_failure(instance, request, "model_missing", status, answer)
            raise UpstreamError(f"model {model!r} is not available: {message}")
        if status == 429:
            raise Overloaded(f"endpoint {self.name!r} is shedding load: {message}", retry_after=1)
        if status in _NOT_THE_CALLERS_FAULT:
            # The router built this request (credentials, path): the caller cannot fix it.
            self._log_failure(instance, request, "refused", status, answer)
            raise UpstreamError(
                f"endpoint {self.name!r} refused the router's request (HTTP {status}; check the "
                f"endpoint's credentials and URL): {message}"
            )
        if 400 <= status < 500:
            raise ModelRejected(
                f"the model rejected the input: {message}",
                original_status=status,
                original_message=message,
            )
        self._log_failure(instance, request, "http_5xx", status, answer)
        raise ModelFailed(
            f"endpoint {self.name!r} answered HTTP {status}: {message}",
            original_status=status,
            original_message=message,
        )
