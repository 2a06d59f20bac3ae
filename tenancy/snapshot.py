"""One immutable view of the whole config; reload builds a new one and swaps a single reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tenancy.models import Endpoint, Tenant


@dataclass(frozen=True, slots=True)
class Snapshot:
    endpoints: Mapping[str, Endpoint]
    tenants: Mapping[str, Tenant]
    generation: int = 0
    # Derived: SHA-256 of an API key -> the tenant that owns it (tells 403 from 401).
    key_owners: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls, endpoints: Mapping[str, Endpoint], tenants: Mapping[str, Tenant], generation: int
    ) -> Snapshot:
        owners = {h: tid for tid, t in tenants.items() for h in t.auth.api_key_sha256}
        return cls(
            endpoints=MappingProxyType(dict(endpoints)),
            tenants=MappingProxyType(dict(sorted(tenants.items()))),
            generation=generation,
            key_owners=MappingProxyType(owners),
        )

    def models_by_endpoint(self) -> dict[str, list[tuple[str, Tenant]]]:
        """Every (model, tenant) pair referenced, grouped by endpoint, in tenant order."""
        grouped: dict[str, list[tuple[str, Tenant]]] = {name: [] for name in self.endpoints}
        for tenant in self.tenants.values():
            grouped.setdefault(tenant.endpoint, []).extend((m, tenant) for m in tenant.models())
        return grouped
