"""InvokeEndpoint on the wire, without the SDK's request pipeline: botocore's SigV4 signer on a light
request object, and SageMaker's JSON error shape parsed back.

``PooledSigV4Auth`` is botocore's ``SigV4Auth`` (its string to sign, scope and URL-path rules) with
the per-call work that does not change between calls done once: the header map (botocore builds an
``email.message`` one and parses the URL twice per call), the canonical path, the timestamp within
a second, and the signing key (four HMACs that change only with the day, region or secret). Every
signature it makes is checked against botocore's unmodified signer in tests/test_sagemaker_wire.py.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth
from botocore.credentials import ReadOnlyCredentials
from botocore.utils import normalize_url_path

SERVICE = "sagemaker"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
INVOKED_VARIANT = "X-Amzn-Invoked-Production-Variant"
ERROR_TYPE = "x-amzn-ErrorType"
_SKIPPED = frozenset(SIGNED_HEADERS_BLACKLIST)
ALGORITHM = "AWS4-HMAC-SHA256"
TIMESTAMP = "%Y%m%dT%H%M%SZ"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(url: str) -> str:
    """The Host header an HTTP client sends for ``url``: lower case, no default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


@dataclass(slots=True)
class SigningRequest:
    """The attributes of ``botocore.awsrequest.AWSRequest`` that ``SigV4Auth`` reads and writes,
    with headers in a plain dict (case as sent; the signer lower-cases them)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


class _SignedHeaders(dict[str, str]):
    """What ``SigV4Auth.canonical_headers`` needs of a header map: names and ``get_all``."""

    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class PooledSigV4Auth(SigV4Auth):
    """botocore's SigV4 signer for one (credentials, region), fast on ``SigningRequest``s."""

    def __init__(self, credentials: ReadOnlyCredentials, region: str, host: str) -> None:
        super().__init__(credentials, SERVICE, region)
        self.credentials: ReadOnlyCredentials = credentials
        self._region = region
        self._host = host  # the Host header the HTTP client will send (host_header)
        self._key_date = ""
        self._key = b""
        self._second = -1
        self._stamp = ""
        self._paths: dict[str, str] = {}

    def headers_to_sign(self, request: Any) -> _SignedHeaders:  # type: ignore[override]
        # botocore builds an email.message header map here; a dict with get_all signs the same.
        signed = _SignedHeaders()
        for name, value in request.headers.items():
            lowered = name.lower()
            if lowered not in _SKIPPED:
                signed[lowered] = value
        signed.setdefault("host", self._host)
        return signed

    def add_auth(self, request: Any) -> None:
        """botocore's SigV4 steps for one InvokeEndpoint (no query string, a bytes body), with the
        per-call parsing done once: the path canonicalised once per URL by botocore's rules, the
        timestamp formatted once per second. The wire-identity test
        checks every signature against botocore's unmodified signer."""
        url = request.url
        if "?" in url:
            super().add_auth(request)
            return
        second = int(time.time())
        if second != self._second:
            self._stamp = time.strftime(TIMESTAMP, time.gmtime(second))
            self._second = second
        stamp = self._stamp
        request.context["timestamp"] = stamp
        headers = request.headers
        headers["X-Amz-Date"] = stamp
        token = self.credentials.token
        if token:
            headers["X-Amz-Security-Token"] = token
        signed = self.headers_to_sign(request)
        names = sorted(signed)
        signed_names = ";".join(names)
        path = self._paths.get(url)
        if path is None:
            # What botocore's SigV4Auth._normalize_url_path does with the URL's path.
            path = self._paths[url] = quote(normalize_url_path(urlsplit(url).path), safe="/~")
        canonical = "\n".join(
            (
                request.method,
                path,
                "",
                "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names),
                signed_names,
                hashlib.sha256(request.body).hexdigest(),
            )
        )
        signature = self.signature(self.string_to_sign(request, canonical), request)
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={self.scope(request)}, SignedHeaders={signed_names}, "
            f"Signature={signature}"
        )

    def signature(self, string_to_sign: str, request: Any) -> str:
        date = request.context["timestamp"][0:8]
        if date != self._key_date:
            # The signing key depends only on (secret, date, region, service): derive it once a day.
            secret = self.credentials.secret_key
            k_date = _hmac(f"AWS4{secret}".encode(), date)
            k_region = _hmac(k_date, self._region)
            self._key = _hmac(_hmac(k_region, SERVICE), "aws4_request")
            self._key_date = date
        return hmac.new(self._key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class SageMakerError:
    """An error answer of the SageMaker Runtime (rest-json protocol)."""

    status: int
    code: str
    message: str
    original_status: int | None = None
    original_message: str | None = None


def parse_error(status: int, error_type: str | None, body: bytes) -> SageMakerError:
    """Read an error the way botocore's rest-json parser does: the code from ``x-amzn-ErrorType``
    (before any ``:``), else the body's ``__type``/``code`` (after any ``#``); the message from
    ``message`` or ``Message``; ModelError's ``OriginalStatusCode`` and ``OriginalMessage``."""
    data: dict[str, Any] = {}
    try:
        parsed = orjson.loads(body) if body else {}
        if isinstance(parsed, dict):
            data = parsed
    except orjson.JSONDecodeError:
        pass
    code = (error_type or "").split(":", 1)[0]
    if not code:
        code = str(data.get("__type") or data.get("code") or "").rsplit("#", 1)[-1]
    message = data.get("message") or data.get("Message") or body[:200].decode("utf-8", "replace")
    original = data.get("OriginalStatusCode")
    original_message = data.get("OriginalMessage")
    return SageMakerError(
        status=status,
        code=code or f"HTTP{status}",
        message=str(message),
        original_status=original if isinstance(original, int) else None,
        original_message=str(original_message) if original_message is not None else None,
    )
