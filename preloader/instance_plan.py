"""What one v2 instance should load, stop publishing and unload to follow the placement.

A pure decision over what the preloader last saw (``V2Warmer`` reads the instance, calls ``plan``,
applies it). Rules (SPEC "Placement"):

- Load every model placed here that is not READY, as far as ``capacity.max_models`` allows.
- A copy that moved away (the preloader placed it here before, the placement now puts it elsewhere)
  is kept until it is READY on every new holder (make before break); then it is *retired*: no longer
  published in the warm map, so routers stop sending it here; ``grace_s`` later it is unloaded
  (reason ``placement``).
- Any other model here that is not placed here (loaded on demand by the router, or no longer in the
  warm set) is unloaded once unused for ``idle_s`` (reason ``idle``); unused means no request in the
  router's traffic counters over that window and on the instance for at least that long.
- When placed models lack room, models not placed here are unloaded for them, least recently used
  first (no recent traffic, then longest here): reason ``capacity``. A moved copy whose new holders are
  not ready yet is never unloaded for room.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Reason = Literal["placement", "idle", "capacity"]


@dataclass(frozen=True, slots=True)
class InstanceView:
    ready: frozenset[str]  # READY on the instance now
    placed: Sequence[str]  # placed here, best first
    ours: Collection[str]  # placed here by the preloader before (a copy that moves was ours)
    retiring: Mapping[str, float]  # model -> when it stopped being published here
    seen: Mapping[str, float]  # model -> when the preloader first saw it READY here


@dataclass(frozen=True, slots=True)
class Plan:
    load: tuple[str, ...] = ()
    retire: tuple[str, ...] = ()  # stop publishing now; unload at a later pass
    unload: tuple[tuple[str, Reason], ...] = ()
    short: tuple[str, ...] = ()  # placed here, but no room even after unloading what may go


def plan(
    view: InstanceView,
    *,
    now: float,
    capacity: int | None,
    moved: Callable[[str], bool | None],
    active: frozenset[str] | None,
    idle_s: float,
    grace_s: float,
) -> Plan:
    placed = set(view.placed)
    retire: list[str] = []
    unload: list[tuple[str, Reason]] = []
    spare: list[str] = []  # may go for room
    for model in sorted(view.ready - placed):
        elsewhere = moved(model) if model in view.ours else None
        if elsewhere is not None:
            if not elsewhere:
                continue  # the new copies are not ready yet: make before break
            since = view.retiring.get(model)
            if since is None:
                retire.append(model)
            elif now - since >= grace_s:
                unload.append((model, "placement"))
            continue
        if _idle(view, model, now, active, idle_s):
            unload.append((model, "idle"))
        else:
            spare.append(model)
    missing = [m for m in view.placed if m not in view.ready]
    held = len(view.ready) - len(unload)
    room = len(missing) if capacity is None else max(0, capacity - held)
    if room < len(missing):
        recent = active or frozenset()
        spare.sort(key=lambda m: (m in recent, view.seen.get(m, now), m))
        for model in spare[: len(missing) - room]:
            unload.append((model, "capacity"))
            room += 1
    return Plan(tuple(missing[:room]), tuple(retire), tuple(unload), tuple(missing[room:]))


def _idle(
    view: InstanceView, model: str, now: float, active: frozenset[str] | None, idle_s: float
) -> bool:
    if active is None or model in active:
        return False
    return now - view.seen.get(model, now) >= idle_s
