"""API keys: only SHA-256 hashes are configured; comparison is constant-time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from router.errors import Forbidden, Unauthorized


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def check_key(
    tenant_id: str,
    accepted: tuple[str, ...],
    authorization: str | None,
    key_owners: Mapping[str, str],
) -> None:
    """Raise unless ``authorization`` carries a key of this tenant (no-op when it has none)."""
    if not accepted:
        return
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    digest = key_hash(authorization[7:].strip())
    # Compare against every accepted hash, without an early exit, so timing says nothing of which.
    matched = False
    for candidate in accepted:
        matched |= hmac.compare_digest(digest, candidate)
    if matched:
        return
    if key_owners.get(digest, tenant_id) != tenant_id:
        raise Forbidden(f"this key does not belong to tenant {tenant_id!r}")
    raise Unauthorized("invalid API key")
