"""API key checks: hashes only, every configured hash compared in constant time."""

from __future__ import annotations

import hmac

import pytest

from router import auth
from router.errors import Forbidden, Unauthorized
from tests.router_fixtures import sha

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
