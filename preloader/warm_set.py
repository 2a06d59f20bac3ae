"""The warm set of an endpoint: which models to keep loaded, in which order, within capacity.

Rules (SPEC "Preloading"):

- Every model a tenant references counts: the default model, every experiment variant, the shadow
  and fallback models (``referenced_models``, the one place that asks a tenant for its models).
- A tenant with ``preload.enabled: false`` contributes nothing; a model it shares with an enabled
  tenant stays (that tenant still wants it warm).
- Order: highest ``preload.priority`` of the enabled tenants that reference the model, then recent
  traffic (the router's per-minute counters), then the name (stable).
- Capacity, per instance: at most ``capacity.max_models`` models, and at most ``capacity.max_bytes``
  of the models' ``preload.size_bytes``. Filling is greedy in order: a model that does not fit is
  skipped and a smaller later one may still fit. A model with no size given is charged the largest
  size known on the endpoint (never zero: an unknown model must not slip past the cap); when no model
  of the endpoint has a size, the byte cap cannot be applied and only ``max_models`` holds.
- The warm-up request is the first enabled tenant's (in tenant-id order) ``preload.sample`` that is
  set, sent with that tenant's ``content_type``: JSON-encoded, except that a string sample with a
  non-JSON content type is sent as the string itself (CSV, plain text).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson
from redis.exceptions import RedisError

from router.loops import reraise_if_cancelling
from router.redis_conn import RedisClient
from router.traffic import recent_traffic
from tenancy.models import Capacity, Tenant
from tenancy.snapshot import Snapshot


def referenced_models(tenant: Tenant) -> tuple[str, ...]:
    """Every model ``tenant``'s requests can reach, default first, without repeats.

    ``Tenant.models()`` is the single definition (default, variants, and, with the processing
    pipeline, selection, ensemble, fallback and shadow models); a reference the preloader should
    warm but the router never calls would be added here.
    """
    return tenant.models()


@dataclass(frozen=True, slots=True)
class WarmModel:
    name: str
    priority: int
    traffic: int = 0
    size_bytes: int | None = None
    sample: bytes | None = None  # the warm-up request body; None: load only
    content_type: str = "application/json"
    tenants: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WarmSet:
    endpoint: str
    models: tuple[WarmModel, ...]  # what every instance gets, best first
    over_capacity: tuple[WarmModel, ...] = ()  # wanted, but past the per-instance capacity
    opted_out: tuple[str, ...] = ()  # referenced only by tenants with preload.enabled false
    names: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(m.name for m in self.models))


def encode_sample(sample: object, content_type: str) -> bytes | None:
    if sample is None:
        return None
    if isinstance(sample, str) and "json" not in content_type.lower():
        return sample.encode()
    return orjson.dumps(sample)


@dataclass(slots=True)
class _Wanted:
    name: str
    priority: int
    tenants: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    sample: bytes | None = None
    content_type: str = "application/json"


def _collect(snapshot: Snapshot, endpoint: str) -> tuple[list[_Wanted], list[str]]:
    wanted: dict[str, _Wanted] = {}
    disabled: set[str] = set()
    for tenant_id, tenant in snapshot.tenants.items():  # tenant-id order (Snapshot sorts)
        if tenant.endpoint != endpoint:
            continue
        models = referenced_models(tenant)
        if not tenant.preload.enabled:
            disabled.update(models)
            continue
        preload = tenant.preload
        sample = encode_sample(preload.sample, preload.content_type)
        for model in models:
            entry = wanted.get(model)
            if entry is None:
                entry = wanted[model] = _Wanted(model, preload.priority)
            entry.priority = max(entry.priority, preload.priority)
            entry.tenants.append(tenant_id)
            if preload.size_bytes is not None:
                entry.size_bytes = max(entry.size_bytes or 0, preload.size_bytes)
            if entry.sample is None and sample is not None:
                entry.sample, entry.content_type = sample, preload.content_type
    return list(wanted.values()), sorted(disabled - wanted.keys())


def fit_capacity(
    models: Iterable[WarmModel], capacity: Capacity
) -> tuple[tuple[WarmModel, ...], tuple[WarmModel, ...]]:
    """(fits, over capacity), each in the given order; see the module docstring for the rules."""
    ordered = list(models)
    known = [m.size_bytes for m in ordered if m.size_bytes is not None]
    unknown_charge = max(known) if known else 0
    fits: list[WarmModel] = []
    over: list[WarmModel] = []
    used = 0
    for model in ordered:
        size = model.size_bytes if model.size_bytes is not None else unknown_charge
        too_many = capacity.max_models is not None and len(fits) >= capacity.max_models
        too_big = (
            capacity.max_bytes is not None and bool(known) and used + size > capacity.max_bytes
        )
        if too_many or too_big:
            over.append(model)
        else:
            fits.append(model)
            used += size
    return tuple(fits), tuple(over)


def build_warm_set(
    snapshot: Snapshot, endpoint: str, traffic: Mapping[str, int] | None = None
) -> WarmSet:
    """The warm set of ``endpoint`` in ``snapshot``, ordered, capped by the endpoint's capacity."""
    traffic = traffic or {}
    wanted, opted_out = _collect(snapshot, endpoint)
    models = [
        WarmModel(
            name=w.name,
            priority=w.priority,
            traffic=int(traffic.get(w.name, 0)),
            size_bytes=w.size_bytes,
            sample=w.sample,
            content_type=w.content_type,
            tenants=tuple(w.tenants),
        )
        for w in wanted
    ]
    models.sort(key=lambda m: (-m.priority, -m.traffic, m.name))
    config = snapshot.endpoints.get(endpoint)
    if config is None:
        return WarmSet(endpoint, (), (), tuple(opted_out))
    fits, over = fit_capacity(models, config.capacity)
    return WarmSet(endpoint, fits, over, tuple(opted_out))


class WarmSets:
    """Warm sets from the serving config and the router's recent-traffic counters.

    Traffic is read from Redis at most every ``traffic_ttl_s`` per endpoint; when Redis cannot be
    read the order falls back to priority and name (preloading must not depend on Redis).
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        redis: RedisClient | None,
        *,
        traffic_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot = snapshot
        self._redis = redis
        self._ttl = traffic_ttl_s
        self._clock = clock
        self._traffic: dict[str, tuple[float, Counter[str]]] = {}

    async def traffic(self, endpoint: str) -> Counter[str]:
        now = self._clock()
        cached = self._traffic.get(endpoint)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        counts: Counter[str] = Counter()
        if self._redis is not None:
            try:
                counts = await recent_traffic(self._redis, endpoint)
            except (RedisError, OSError) as exc:
                reraise_if_cancelling(exc)
                counts = cached[1] if cached is not None else Counter()
        self._traffic[endpoint] = (now, counts)
        return counts

    async def active(self, endpoint: str, within_s: float) -> frozenset[str] | None:
        """Models with a request in the last ``within_s`` (whole minutes, rounded up); None when
        Redis cannot tell (then nothing counts as idle)."""
        if self._redis is None:
            return None
        minutes = max(1, math.ceil(within_s / 60))
        try:
            counts = await recent_traffic(self._redis, endpoint, minutes=minutes)
        except (RedisError, OSError) as exc:
            reraise_if_cancelling(exc)
            return None
        return frozenset(m for m, n in counts.items() if n > 0)

    async def get(self, endpoint: str) -> WarmSet:
        return build_warm_set(self._snapshot(), endpoint, await self.traffic(endpoint))
