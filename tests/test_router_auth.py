"""API key checks: hashes only, every configured hash compared in constant time."""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path
from typing import Any

import orjson
import pytest

from router import auth
from router.errors import Forbidden, Unauthorized
from tests.router_fixtures import ConfigDir, RouterFactory, sha

KEYS = (sha("k1"), sha("k2"), sha("k3"))
OWNERS = {sha("k1"): "acme", sha("k2"): "acme", sha("k3"): "acme", sha("other"): "globex"}


def test_accepts_any_configured_key() -> None:
    for key in ("k1", "k2", "k3"):
        auth.check_key("acme", KEYS, f"Bearer {key}", OWNERS)


def test_compares_every_hash_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first key matching costs the same comparisons as the last (or none)."""
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for key in ("k1", "k3"):
        calls.clear()
        auth.check_key("acme", KEYS, f"Bearer {key}", OWNERS)
        assert [b for _, b in calls] == list(KEYS)
    calls.clear()
    with pytest.raises(Unauthorized):
        auth.check_key("acme", KEYS, "Bearer nope", OWNERS)
    assert len(calls) == len(KEYS)


def test_key_of_another_tenant_is_forbidden() -> None:
    with pytest.raises(Forbidden):
        auth.check_key("acme", KEYS, "Bearer other", OWNERS)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Token k1", "bearer k1"])
def test_missing_or_malformed_header(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        auth.check_key("acme", KEYS, header, OWNERS)


def test_tenant_without_keys_needs_none() -> None:
    auth.check_key("sidecar", (), None, OWNERS)


async def raw_status(router_url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as raw bytes (clients refuse non-ASCII header values); status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(router_url.rsplit(":", 1)[1]))
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("value", [b"Bearer t\xff0k", b"Bearer \xc3\xa9t\xc3\xa9", b"\x80"])
async def test_a_non_ascii_authorization_header_is_a_401_never_a_500(
    tmp_path: Path, fresh_mlservers: list[Any], start_router: RouterFactory, value: bytes
) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [fresh_mlservers[0].url]}})
    cfg.tenant("acme", endpoint="mme", model="iris-lr", auth={"api_key_sha256": [sha("k")]})
    router = await start_router(cfg, admin_token="t0k")
    for method, path in (("GET", "/v1/admin/tenants"), ("POST", "/v1/tenants/acme/invocations")):
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n".encode()
            + b"Authorization: "
            + value
            + b"\r\nConnection: close\r\n\r\n{}"
        )
        status, body = await raw_status(router.url, request)
        assert status == 401, (path, body)
        assert orjson.loads(body)["error"]["code"] == "unauthorized"
