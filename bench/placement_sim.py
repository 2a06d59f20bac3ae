"""``python -m bench.placement_sim`` (``make bench-placement``): placement against the alternatives on a
simulated fleet far larger than this machine, with the same placement code the preloader runs.

The fleet: ``--models`` models (10,000), ``--instances`` instances (100) of ``--slots`` models each
(150). Requests pick a model from a Zipf distribution (``--zipf`` 1.1); half-way through the measured
run the popularity is reshuffled (another random permutation). One instance joins at a quarter of the
run, one leaves at three quarters. A reconcile pass (the preloader's) runs every ``--pass-every``
requests. Every strategy sees the same request stream:

- **placement** — ``router.placement.place`` on each pass from the last window's traffic; the router
  sends a model to one of its holders, and a model held nowhere is loaded on the first instance of its
  ranking with room, evicting only on-demand (unplaced) models, least recently used first.
- **top everywhere** (today): every instance holds the busiest ``slots * (1 - headroom)`` models;
  other models are loaded on demand on a random instance into the remaining slots (LRU).
- **plain MME**: each instance an LRU of ``slots`` models; random routing.
- **LRU + affinity**: each instance an LRU of ``slots`` models; each model routed to the first
  instance of its rendezvous ranking.

Reported: cold-start rate (requests that found their model not loaded on the instance serving them),
loads per 1,000 requests (every load: cold ones, and the preloader's), copies the preloader moved for
each instance event, and the CPU time of one ``place`` call on the full fleet. A warm-up of
``--warmup`` requests (not counted) lets the caches fill first.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router.placement import ModelDemand, Placement, place, rank
from tenancy.models import Capacity, PlacementPolicy


@dataclass(slots=True)
class Tally:
    requests: int = 0
    cold: int = 0
    loads: int = 0
    moved: list[int] = field(default_factory=list)  # per instance event, loads by the preloader

    def reset(self) -> None:
        self.requests = self.cold = self.loads = 0
        self.moved = []


class Strategy(Protocol):
    name: str
    tally: Tally

    def request(self, model: str) -> None: ...
    def reconcile(self, traffic: Counter[str]) -> int: ...  # copies it moved for membership
    def join(self, instance: str) -> None: ...
    def leave(self, instance: str) -> None: ...


class _Lru:
    """One instance's on-demand models, least recently used first."""

    __slots__ = ("models",)

    def __init__(self) -> None:
        self.models: OrderedDict[str, None] = OrderedDict()

    def touch(self, model: str) -> bool:
        if model in self.models:
            self.models.move_to_end(model)
            return True
        return False

    def add(self, model: str, limit: int) -> str | None:
        evicted = None
        if len(self.models) >= limit:
            evicted, _ = self.models.popitem(last=False)
        self.models[model] = None
        return evicted


class PlacementStrategy:
    name = "placement"

    def __init__(
        self, instances: Sequence[str], slots: int, policy: PlacementPolicy, rng: random.Random
    ) -> None:
        self.tally = Tally()
        self._slots = slots
        self._policy = policy
        self._rng = rng
        self._instances = list(instances)
        self._placed: dict[str, set[str]] = {i: set() for i in instances}
        self._ondemand: dict[str, _Lru] = {i: _Lru() for i in instances}
        self._where: dict[str, list[str]] = {}  # model -> instances holding it
        self._models: list[str] = []
        self.place_cpu_s: list[float] = []

    def set_models(self, models: Sequence[str]) -> None:
        self._models = list(models)

    def _hold(self, model: str, instance: str) -> None:
        self._where.setdefault(model, []).append(instance)

    def _drop(self, model: str, instance: str) -> None:
        holders = self._where.get(model)
        if holders is not None and instance in holders:
            holders.remove(instance)
            if not holders:
                del self._where[model]

    def request(self, model: str) -> None:
        self.tally.requests += 1
        holders = self._where.get(model)
        if holders:
            instance = holders[0] if len(holders) == 1 else self._rng.choice(holders)
            self._ondemand[instance].touch(model)
            return
        self.tally.cold += 1
        self.tally.loads += 1
        ranking = rank(model, self._instances)
        target = next(
            (
                i
                for i in ranking
                if len(self._placed[i]) + len(self._ondemand[i].models) < self._slots
            ),
            None,
        )
        if target is None:  # everyone full: evict on-demand models only, on the first that has some
            target = next((i for i in ranking if self._ondemand[i].models), ranking[0])
        lru = self._ondemand[target]
        room = self._slots - len(self._placed[target])
        evicted = lru.add(model, max(room, 1))
        if evicted is not None:
            self._drop(evicted, target)
        self._hold(model, target)

    def reconcile(self, traffic: Counter[str]) -> int:
        demand = [ModelDemand(m, demand=traffic.get(m, 0)) for m in self._models]
        started = time.process_time()
        placement: Placement = place(
            demand, {i: Capacity(max_models=self._slots) for i in self._instances}, self._policy
        )
        self.place_cpu_s.append(time.process_time() - started)
        loads = 0
        for instance in self._instances:
            wanted = placement.models_on(instance)
            have = self._placed[instance]
            lru = self._ondemand[instance]
            for model in wanted - have:
                if lru.models.pop(model, 0) is None:  # loaded on demand already: now placed
                    continue
                loads += 1
                self._hold(model, instance)
            for model in have - wanted:  # make before break: the new copies are loaded above
                self._drop(model, instance)
            self._placed[instance] = set(wanted)
            while len(wanted) + len(lru.models) > self._slots:
                evicted, _ = lru.models.popitem(last=False)
                self._drop(evicted, instance)
        self.tally.loads += loads
        return loads

    def join(self, instance: str) -> None:
        self._instances.append(instance)
        self._placed[instance] = set()
        self._ondemand[instance] = _Lru()

    def leave(self, instance: str) -> None:
        self._instances.remove(instance)
        for model in self._placed.pop(instance) | set(self._ondemand.pop(instance).models):
            self._drop(model, instance)


class TopEverywhere:
    name = "top everywhere (today)"

    def __init__(
        self, instances: Sequence[str], slots: int, headroom: float, rng: random.Random
    ) -> None:
        self.tally = Tally()
        self._instances = list(instances)
        self._top_count = int(slots * (1 - headroom))
        self._spare = slots - self._top_count
        self._top: set[str] = set()
        self._ondemand: dict[str, _Lru] = {i: _Lru() for i in instances}
        self._rng = rng
        self._fresh: set[str] = set()  # joined, not yet warmed by a pass

    def request(self, model: str) -> None:
        self.tally.requests += 1
        if model in self._top:
            if not self._fresh:
                return
            warm = [i for i in self._instances if i not in self._fresh]
            if warm:
                return  # the router sends it to a warm instance
        instance = self._rng.choice(self._instances)
        if self._ondemand[instance].touch(model):
            return
        self.tally.cold += 1
        self.tally.loads += 1
        self._ondemand[instance].add(model, self._spare)

    def reconcile(self, traffic: Counter[str]) -> int:
        top = {m for m, _ in traffic.most_common(self._top_count)}
        churn = len(top - self._top) * (len(self._instances) - len(self._fresh))
        fresh = len(top) * len(self._fresh)  # what an event costs: a new instance gets the warm set
        self._top = top
        self._fresh.clear()
        self.tally.loads += churn + fresh
        return fresh

    def join(self, instance: str) -> None:
        self._instances.append(instance)
        self._ondemand[instance] = _Lru()
        self._fresh.add(instance)

    def leave(self, instance: str) -> None:
        self._instances.remove(instance)
        del self._ondemand[instance]
        self._fresh.discard(instance)


class LruFleet:
    """Every instance an LRU of ``slots`` models; ``affinity`` routes each model to its first-ranked
    instance instead of a random one."""

    def __init__(
        self, instances: Sequence[str], slots: int, *, affinity: bool, rng: random.Random
    ) -> None:
        self.name = "LRU + affinity" if affinity else "plain MME (LRU, random)"
        self.tally = Tally()
        self._instances = list(instances)
        self._slots = slots
        self._affinity = affinity
        self._rng = rng
        self._lru: dict[str, _Lru] = {i: _Lru() for i in instances}
        self._first: dict[str, str] = {}

    def request(self, model: str) -> None:
        self.tally.requests += 1
        if self._affinity:
            instance = self._first.get(model)
            if instance is None:
                instance = self._first[model] = rank(model, self._instances)[0]
        else:
            instance = self._rng.choice(self._instances)
        lru = self._lru[instance]
        if lru.touch(model):
            return
        self.tally.cold += 1
        self.tally.loads += 1
        lru.add(model, self._slots)

    def reconcile(self, traffic: Counter[str]) -> int:
        return 0  # nothing preloads: every load is a cold start

    def join(self, instance: str) -> None:
        self._instances.append(instance)
        self._lru[instance] = _Lru()
        self._first.clear()

    def leave(self, instance: str) -> None:
        self._instances.remove(instance)
        del self._lru[instance]
        self._first.clear()


def zipf_stream(models: Sequence[str], s: float, count: int, rng: random.Random) -> list[str]:
    weights = [1.0 / (k + 1) ** s for k in range(len(models))]
    cumulative = list(itertools.accumulate(weights))
    return rng.choices(models, cum_weights=cumulative, k=count)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    cold_rate: float
    loads_per_1k: float
    moved_join: int | None
    moved_leave: int | None


def run(args: argparse.Namespace) -> tuple[list[Row], list[float]]:
    rng = random.Random(args.seed)
    models = [f"tenant-{i:05d}/model" for i in range(args.models)]
    instances = [f"http://10.0.{i // 250}.{i % 250}:8080" for i in range(args.instances)]
    policy = PlacementPolicy(mode="spread", headroom=args.headroom, max_copies=args.max_copies)
    first, second = list(models), list(models)
    rng.shuffle(first)
    rng.shuffle(second)
    warm = zipf_stream(first, args.zipf, args.warmup, rng)
    half = args.requests // 2
    measured = zipf_stream(first, args.zipf, half, rng) + zipf_stream(
        second, args.zipf, args.requests - half, rng
    )
    placement = PlacementStrategy(instances, args.slots, policy, random.Random(1))
    placement.set_models(models)
    strategies: list[Strategy] = [
        placement,
        TopEverywhere(instances, args.slots, args.headroom, random.Random(2)),
        LruFleet(instances, args.slots, affinity=False, rng=random.Random(3)),
        LruFleet(instances, args.slots, affinity=True, rng=random.Random(4)),
    ]
    joiner, leaver = "http://10.9.9.9:8080", instances[len(instances) // 2]
    events = {len(measured) // 4: ("join", joiner), 3 * len(measured) // 4: ("leave", leaver)}
    rows = []
    for strategy in strategies:
        strategy.reconcile(Counter())
        window: Counter[str] = Counter()
        for index, model in enumerate(warm):
            strategy.request(model)
            window[model] += 1
            if (index + 1) % args.pass_every == 0:
                strategy.reconcile(window)
                window = Counter()
        strategy.tally.reset()
        pending: str | None = None
        for index, model in enumerate(measured):
            event = events.get(index)
            if event is not None:
                kind, instance = event
                strategy.join(instance) if kind == "join" else strategy.leave(instance)
                pending = kind
            strategy.request(model)
            window[model] += 1
            if (index + 1) % args.pass_every == 0:
                loads = strategy.reconcile(window)
                window = Counter()
                if pending is not None:
                    strategy.tally.moved.append(loads)
                    pending = None
        tally = strategy.tally
        preloads = not isinstance(strategy, LruFleet)
        rows.append(
            Row(
                strategy.name,
                tally.cold / tally.requests,
                1000 * tally.loads / tally.requests,
                tally.moved[0] if preloads and tally.moved else None,
                tally.moved[1] if preloads and len(tally.moved) > 1 else None,
            )
        )
        print(f"  {strategy.name}: done", flush=True)
    return rows, placement.place_cpu_s


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| strategy | cold-start rate | loads per 1,000 requests | copies moved: join | copies moved: leave |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        join = "—" if row.moved_join is None else f"{row.moved_join:,}"
        leave = "—" if row.moved_leave is None else f"{row.moved_leave:,}"
        lines.append(
            f"| {row.name} | {100 * row.cold_rate:.3f} % | {row.loads_per_1k:.2f} | {join} | {leave} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.placement_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--slots", type=int, default=150, help="Models one instance holds.")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--requests", type=int, default=400_000, help="Measured requests.")
    parser.add_argument("--warmup", type=int, default=100_000)
    parser.add_argument(
        "--pass-every", type=int, default=25_000, help="Requests per reconcile pass."
    )
    parser.add_argument("--headroom", type=float, default=0.1)
    parser.add_argument("--max-copies", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    print(
        f"{args.models:,} models, {args.instances} instances x {args.slots} slots, Zipf s={args.zipf}, "
        f"{args.requests:,} requests (+{args.warmup:,} warm-up), a pass every {args.pass_every:,}; "
        "popularity reshuffled half-way, one instance joins at 1/4, one leaves at 3/4",
        flush=True,
    )
    rows, cpu = run(args)
    print(table(rows))
    best_other = min(r.cold_rate for r in rows[1:])
    plain = rows[2].cold_rate
    print(
        f"placing {args.models:,} models on {args.instances} instances: median {statistics.median(cpu):.2f} s CPU "
        f"(max {max(cpu):.2f} s over {len(cpu)} passes)"
    )
    print(
        f"placement cold-start rate / plain MME: {rows[0].cold_rate / plain if plain else 0:.4f} "
        f"(target <= 0.1); below every alternative: {rows[0].cold_rate < best_other}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
