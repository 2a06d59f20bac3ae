"""Fuzzed requests against the router (hypothesis): headers and bodies a client could send.

Raw sockets, so header values can carry any byte HTTP allows in a field value (including bytes that
are not UTF-8). Every request must get an answer; none a 500; every error answer JSON. Requests
stay well-formed HTTP (a request line and framing the parser accepts): what is fuzzed is what the
router's own code reads.
"""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# RFC 9110 field-value bytes: visible ASCII, space and tab inside, and obs-text (0x80-0xFF).
FIELD_BYTES = [0x09, 0x20, *range(0x21, 0x7F), *range(0x80, 0x100)]
field_value = st.lists(st.sampled_from(FIELD_BYTES), max_size=200).map(
    lambda b: bytes(b).strip(b" \t")
)
field_name = st.from_regex(rb"\A[A-Za-z0-9-]{1,24}\Z", fullmatch=True)
TENANTS = ["beta", "alpha", "no-such-tenant", "b%C3%A9ta", "beta%00", "..%2Fbeta"]
CONTENT_TYPES = [b"application/json", b"text/plain", b"application/octet-stream", b"", b"\xff\xfe"]


def raw_request(
    host: str, port: int, request: bytes, timeout_s: float = 15.0
) -> tuple[int, str, bytes]:
    """Send ``request`` as is; (status, content type, body) of the answer."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return response.status, response.getheader("Content-Type", ""), body


def build(tenant: str, headers: list[tuple[bytes, bytes]], body: bytes, *, big: int = 0) -> bytes:
    lines = [
        f"POST /v1/tenants/{tenant}/invocations HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"Content-Length: " + str(len(body)).encode(),
        *(name + b": " + value for name, value in headers),
    ]
    if big:
        lines.append(b"X-Big: " + b"a" * big)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def judge(status: int, content_type: str) -> str | None:
    if status >= 500 and status not in (502, 503, 504):
        return f"HTTP {status}"
    if status != 200 and not content_type.startswith("application/json"):
        return f"HTTP {status} answered as {content_type or 'no content type'}"
    return None


def fuzz_router(router_url: str, key: str, examples: int) -> list[str]:
    """Run ``examples`` fuzzed requests; the problems found (shrunk to a small example)."""
    parts = urlsplit(router_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(
        tenant=st.sampled_from(TENANTS),
        auth=st.one_of(st.just(b"Bearer " + key.encode()), field_value),
        unit=st.one_of(st.none(), field_value),
        request_id=st.one_of(st.none(), field_value),
        content_type=st.sampled_from(CONTENT_TYPES),
        extra=st.lists(st.tuples(field_name, field_value), max_size=4),
        body=st.one_of(st.binary(max_size=2048), st.just(b'{"inputs": []}')),
        big=st.sampled_from([0, 0, 0, 9000]),
    )
    def one(
        tenant: str,
        auth: bytes,
        unit: bytes | None,
        request_id: bytes | None,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]],
        body: bytes,
        big: int,
    ) -> None:
        headers = [(b"Authorization", auth), (b"Content-Type", content_type), *extra]
        if unit is not None:
            headers.append((b"X-Unit-Id", unit))
        if request_id is not None:
            headers.append((b"X-Request-Id", request_id))
        try:
            status, ctype, _ = raw_request(host, port, build(tenant, headers, body, big=big))
        except (OSError, http.client.HTTPException) as exc:
            raise AssertionError(f"no answer ({exc!r}) to {tenant} headers={headers!r}") from exc
        problem = judge(status, ctype)
        if problem is not None:
            raise AssertionError(f"{problem} for {tenant} headers={headers!r} body={body[:60]!r}")

    try:
        one()
    except AssertionError as exc:
        return [str(exc)[:400]]
    return []
