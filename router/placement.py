"""Placement: which instances of an endpoint hold which model (SPEC "Placement").

One pure function, ``place``, called by the preloader (what to load where), the router (which
instance to load a model on when no one holds it: ``rank``) and the simulator (``bench.placement``),
so all three agree. Rules:

- Each model ranks the instances by a rendezvous hash of (model, instance): the ranking depends on
  nothing else, so one instance joining or leaving changes only the models it ranks first.
- Room on an instance is its capacity less ``headroom`` (kept for on-demand loads), at least one
  model. A model with no size is charged the largest size known on the endpoint; with no size known
  at all only ``max_models`` applies (the same rule as the warm set's ``fit_capacity``).
- ``spread``: every model gets a first copy (coverage comes before replication), on the first
  instance of its ranking with room (consistent hashing with bounded loads). First copies are placed
  in a fixed order (by the model's hash), so a shift in traffic does not reshuffle them. When the
  instances cannot hold every model once, the models kept are the first in warm-set order (priority,
  then traffic, then name). Then extra copies, busiest model first, each on the next instance of
  its ranking with room.
- Copies: one per ``1/N`` share of recent traffic (N instances), rounded up, between ``min_copies``
  and ``max_copies``, capped by N; the busiest model gets at least two when allowed.
- ``replicate``: each instance holds the warm set in warm-set order, as much as fits. ``auto``
  replicates when the whole warm set fits on every instance, else spreads.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tenancy.models import Capacity, PlacementPolicy

Resolved = Literal["replicate", "spread"]

_INDEX_BITS = 20  # a score's low bits carry the instance's index, so plain int sorting ranks
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_SCORE_MASK = ((1 << 64) - 1) ^ _INDEX_MASK
_UNLIMITED = 1 << 62


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One warm-set model: its recent traffic (any unit, only shares matter), priority and size."""

    name: str
    demand: float = 0.0
    priority: int = 0
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    """The outcome: ``holders`` maps each placed model to its instances, best ranked first."""

    mode: Resolved
    holders: Mapping[str, tuple[str, ...]]
    instances: tuple[str, ...]
    unplaced: tuple[str, ...] = ()  # no room anywhere
    by_instance: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        per: dict[str, set[str]] = {name: set() for name in self.instances}
        for model, where in self.holders.items():
            for instance in where:
                per[instance].add(model)
        object.__setattr__(
            self, "by_instance", {name: frozenset(models) for name, models in per.items()}
        )

    def models_on(self, instance: str) -> frozenset[str]:
        return self.by_instance.get(instance, frozenset())

    @property
    def copies(self) -> int:
        return sum(len(where) for where in self.holders.values())

    def pairs(self) -> set[tuple[str, str]]:
        """Every (model, instance) copy."""
        return {(model, inst) for model, where in self.holders.items() for inst in where}


def key_hash(name: str) -> int:
    """A 64-bit hash of a model name, the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


InstanceKey = tuple[int, int, int]


def instance_keys(names: Sequence[str]) -> list[InstanceKey]:
    """Per instance, an odd multiplier and an offset drawn from its name's hash, and its index."""
    keys = []
    for index, name in enumerate(names):
        digest = hashlib.blake2b(name.encode(), digest_size=16, person=b"instance").digest()
        keys.append(
            (int.from_bytes(digest[:8], "big") | 1, int.from_bytes(digest[8:], "big"), index)
        )
    return keys


def _scores(model_hash: int, keys: Sequence[InstanceKey]) -> list[int]:
    # Score of (model, instance): the top bits of model_hash x multiplier + offset, mod 2^64 (a
    # multiply-shift hash, one per instance: cheap, and it depends on this pair alone, which is all
    # rendezvous hashing needs). The index in the low bits makes ties impossible and ``max`` exact.
    return [(model_hash * a + b) & _SCORE_MASK | i for a, b, i in keys]


def rank(model: str, instances: Iterable[str]) -> list[str]:
    """The instances in ``model``'s rendezvous order, best first."""
    names = sorted(set(instances))
    scores = _scores(key_hash(model), instance_keys(names))
    scores.sort(reverse=True)
    return [names[s & _INDEX_MASK] for s in scores]


def copies_wanted(
    models: Sequence[ModelDemand], instances: int, policy: PlacementPolicy
) -> dict[str, int]:
    """How many copies each model should have, from its share of the traffic."""
    most = max(1, min(policy.max_copies, instances))
    least = min(policy.min_copies, most)
    total = sum(max(m.demand, 0.0) for m in models)
    wanted: dict[str, int] = {}
    for model in models:
        share = max(model.demand, 0.0) / total if total > 0 else 0.0
        wanted[model.name] = min(most, max(least, math.ceil(share * instances - 1e-9)))
    if total > 0:
        busiest = min(models, key=lambda m: (-m.demand, m.name))
        wanted[busiest.name] = max(wanted[busiest.name], min(2, most))
    return wanted


def warm_order(models: Iterable[ModelDemand]) -> list[ModelDemand]:
    """Warm-set order: priority, then traffic, then name."""
    return sorted(models, key=lambda m: (-m.priority, -m.demand, m.name))


class _Room:
    """What each instance can still take, in models and bytes."""

    def __init__(
        self,
        names: Sequence[str],
        capacity: Mapping[str, Capacity],
        headroom: float,
        sizes_known: bool,
    ) -> None:
        self.models = [_usable(capacity[n].max_models, headroom, floor_one=True) for n in names]
        self.bytes = [
            _usable(capacity[n].max_bytes, headroom, floor_one=False) if sizes_known else _UNLIMITED
            for n in names
        ]

    def fits(self, index: int, size: int) -> bool:
        return self.models[index] >= 1 and self.bytes[index] >= size

    def take(self, index: int, size: int) -> None:
        self.models[index] -= 1
        self.bytes[index] -= size


def _usable(limit: int | None, headroom: float, *, floor_one: bool) -> int:
    if limit is None:
        return _UNLIMITED
    usable = math.floor(limit * (1.0 - headroom) + 1e-9)
    return max(1, usable) if floor_one else usable


def _charges(models: Sequence[ModelDemand]) -> tuple[dict[str, int], bool]:
    known = [m.size_bytes for m in models if m.size_bytes is not None]
    unknown = max(known) if known else 0
    return {m.name: m.size_bytes if m.size_bytes is not None else unknown for m in models}, bool(
        known
    )


def place(
    models: Iterable[ModelDemand],
    capacity: Mapping[str, Capacity],
    policy: PlacementPolicy,
) -> Placement:
    """Place the warm set ``models`` on the instances ``capacity`` names (instance → its capacity)."""
    ordered = warm_order(_distinct(models))
    names = tuple(sorted(capacity))
    charge, sizes_known = _charges(ordered)
    room = _Room(names, capacity, policy.headroom, sizes_known)
    if not names:
        return Placement("spread", {}, names, tuple(m.name for m in ordered))
    mode: Resolved
    if policy.mode == "auto":
        everything = sum(charge.values())
        fits_everywhere = all(
            room.models[i] >= len(ordered) and room.bytes[i] >= everything
            for i in range(len(names))
        )
        mode = "replicate" if fits_everywhere else "spread"
    else:
        mode = policy.mode
    if mode == "replicate":
        return _replicate(ordered, names, room, charge)
    return _spread(ordered, names, room, charge, policy)


def _distinct(models: Iterable[ModelDemand]) -> list[ModelDemand]:
    seen: dict[str, ModelDemand] = {}
    for model in models:
        seen.setdefault(model.name, model)
    return list(seen.values())


def _replicate(
    ordered: Sequence[ModelDemand], names: tuple[str, ...], room: _Room, charge: Mapping[str, int]
) -> Placement:
    keys = instance_keys(names)
    holders: dict[str, tuple[str, ...]] = {}
    unplaced: list[str] = []
    for model in ordered:
        size = charge[model.name]
        where = [i for i in range(len(names)) if room.fits(i, size)]
        for i in where:
            room.take(i, size)
        if not where:
            unplaced.append(model.name)
            continue
        chosen = set(where)
        scores = _scores(key_hash(model.name), keys)
        scores.sort(reverse=True)
        holders[model.name] = tuple(
            names[s & _INDEX_MASK] for s in scores if s & _INDEX_MASK in chosen
        )
    return Placement("replicate", holders, names, tuple(unplaced))


def _kept(ordered: Sequence[ModelDemand], room: _Room, charge: Mapping[str, int]) -> int:
    """How many models, in warm-set order, the instances can hold once (by total room)."""
    slots = sum(room.models)
    space = sum(room.bytes)
    for count, model in enumerate(ordered):
        slots -= 1
        space -= charge[model.name]
        if slots < 0 or space < 0:
            return count
    return len(ordered)


def _spread(
    ordered: Sequence[ModelDemand],
    names: tuple[str, ...],
    room: _Room,
    charge: Mapping[str, int],
    policy: PlacementPolicy,
) -> Placement:
    keys = instance_keys(names)
    kept = list(ordered[: _kept(ordered, room, charge)])
    unplaced = [m.name for m in ordered[len(kept) :]]
    model_hash = {m.name: key_hash(m.name) for m in kept}
    chosen: dict[str, list[int]] = {}
    # First copies, in hash order: independent of traffic, so a traffic shift does not move them.
    for model in sorted(kept, key=lambda m: (model_hash[m.name], m.name)):
        size = charge[model.name]
        scores = _scores(model_hash[model.name], keys)
        best = max(scores) & _INDEX_MASK
        if not room.fits(best, size):
            scores.sort(reverse=True)
            best = next((s & _INDEX_MASK for s in scores if room.fits(s & _INDEX_MASK, size)), -1)
            if best < 0:
                unplaced.append(model.name)
                continue
        room.take(best, size)
        chosen[model.name] = [best]
    # Extra copies, busiest first, one round per copy number so every hot model gets its second
    # copy before any gets a third.
    wanted = copies_wanted(kept, len(names), policy)
    busiest = sorted(
        (m for m in kept if wanted[m.name] > 1 and m.name in chosen),
        key=lambda m: (-m.demand, m.name),
    )
    rankings: dict[str, list[int]] = {}
    for copy in range(2, max((wanted[m.name] for m in busiest), default=1) + 1):
        for model in busiest:
            if wanted[model.name] < copy or len(chosen[model.name]) < copy - 1:
                continue
            ranking = rankings.get(model.name)
            if ranking is None:
                scores = _scores(model_hash[model.name], keys)
                scores.sort(reverse=True)
                ranking = rankings[model.name] = [s & _INDEX_MASK for s in scores]
            size = charge[model.name]
            have = chosen[model.name]
            extra = next((i for i in ranking if i not in have and room.fits(i, size)), -1)
            if extra >= 0:
                room.take(extra, size)
                have.append(extra)
    holders: dict[str, tuple[str, ...]] = {}
    for model in kept:
        where = chosen.get(model.name)
        if where is None:
            continue
        if len(where) > 1:
            ranking = rankings[model.name]
            where = sorted(where, key=ranking.index)
        holders[model.name] = tuple(names[i] for i in where)
    return Placement("spread", holders, names, tuple(unplaced))
