"""The placement function's properties (SPEC "Placement" 1, 2, 3, 5, 6, 7), without a server.

Fleets of several sizes and seeded random warm sets; every test asserts a property over all of them.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.placement import ModelDemand, Placement, copies_wanted, place, rank
from tenancy.models import Capacity, PlacementPolicy

REPO = Path(__file__).resolve().parent.parent
SPREAD = PlacementPolicy(mode="spread")


def fleet(
    count: int, max_models: int | None = 10, max_bytes: int | None = None
) -> dict[str, Capacity]:
    return {
        f"http://10.1.{i // 200}.{i % 200}:8080": Capacity(
            max_models=max_models, max_bytes=max_bytes
        )
        for i in range(count)
    }


def zipf_models(count: int, *, seed: int, s: float = 1.1, sizes: bool = False) -> list[ModelDemand]:
    rng = random.Random(seed)
    names = [f"t{seed}-{i}/model" for i in range(count)]
    rng.shuffle(names)  # the busiest model is not the first name
    return [
        ModelDemand(
            name,
            demand=round(10_000 / (rank_ + 1) ** s, 3),
            size_bytes=rng.randint(5, 15) * 1_000_000 if sizes else None,
        )
        for rank_, name in enumerate(names)
    ]


# (instances, models per instance, models): the instances (less 10 % headroom) hold every model once.
SHAPES = [(3, 5, 9), (5, 10, 40), (8, 20, 120), (20, 30, 450), (50, 40, 1500)]


def shapes() -> Iterator[tuple[dict[str, Capacity], list[ModelDemand]]]:
    for seed, (instances, per, models) in enumerate(SHAPES):
        yield fleet(instances, per), zipf_models(models, seed=seed)


def held(placement: Placement) -> set[str]:
    return set(placement.holders)


# --- 1. coverage -------------------------------------------------------------------------------


def test_coverage_every_model_placed_when_capacity_holds_them_once() -> None:
    for capacity, models in shapes():
        placement = place(models, capacity, SPREAD)
        assert placement.mode == "spread"
        assert held(placement) == {m.name for m in models}
        assert placement.unplaced == ()


def test_coverage_in_bytes() -> None:
    models = zipf_models(60, seed=7, sizes=True)
    total = sum(m.size_bytes or 0 for m in models)
    capacity = fleet(
        6, max_models=None, max_bytes=total // 4
    )  # 6 x 1/4 x 0.9: room for 1.35 copies
    placement = place(models, capacity, SPREAD)
    assert held(placement) == {m.name for m in models}


def test_coverage_before_copies_and_priority_before_traffic_when_short() -> None:
    """Room for 9 copies, 12 models: the 9 kept are highest priority, then busiest; none of them is
    dropped to give a hot model a second copy."""
    models = [ModelDemand(f"m{i}", demand=100 - i) for i in range(12)]
    models[11] = ModelDemand("m11", demand=0, priority=5)
    placement = place(models, fleet(3, 3), PlacementPolicy(mode="spread", headroom=0))
    assert placement.copies == 9
    assert held(placement) == {"m11"} | {f"m{i}" for i in range(8)}
    assert set(placement.unplaced) == {"m8", "m9", "m10"}


# --- 2. demand ---------------------------------------------------------------------------------


def test_copies_grow_with_traffic_share_within_bounds() -> None:
    policy = PlacementPolicy(mode="spread", min_copies=1, max_copies=4)
    for capacity, models in shapes():
        placement = place(models, capacity, policy)
        by_demand = sorted(models, key=lambda m: -m.demand)
        copies = [len(placement.holders[m.name]) for m in by_demand]
        assert copies == sorted(copies, reverse=True), "a busier model has fewer copies"
        assert all(1 <= c <= min(4, len(capacity)) for c in copies)
        assert copies[0] >= 2, "the busiest model has a second copy"
        for model, count in zip(by_demand, copies, strict=True):
            assert len(set(placement.holders[model.name])) == count  # copies on distinct instances


def test_copies_follow_share_of_instances() -> None:
    """One copy per 1/N of the traffic, rounded up: 50 % on 10 instances wants 5, capped at 3."""
    models = [ModelDemand("hot", 50), ModelDemand("warm", 15), ModelDemand("cool", 5)] + [
        ModelDemand(f"cold{i}", 1) for i in range(30)
    ]
    wanted = copies_wanted(models, 10, PlacementPolicy(max_copies=3))
    assert (wanted["hot"], wanted["warm"], wanted["cool"], wanted["cold0"]) == (3, 2, 1, 1)
    assert copies_wanted(models, 2, PlacementPolicy(max_copies=3))["hot"] == 2  # capped by N
    assert copies_wanted(models, 10, PlacementPolicy(min_copies=2, max_copies=2))["cold0"] == 2
    # No traffic known: everyone gets min_copies.
    idle = [ModelDemand(f"m{i}") for i in range(5)]
    assert set(copies_wanted(idle, 4, PlacementPolicy(min_copies=1)).values()) == {1}


def test_busiest_model_gets_a_second_copy_even_with_even_traffic() -> None:
    models = [ModelDemand(f"m{i}", demand=10) for i in range(6)]
    placement = place(models, fleet(3, 10), SPREAD)
    copies = sorted((len(w), m) for m, w in placement.holders.items())
    assert copies[-1] == (2, "m0")
    assert [c for c, _ in copies[:-1]] == [1] * 5


# --- 3. capacity -------------------------------------------------------------------------------


@pytest.mark.parametrize("headroom", [0.0, 0.1, 0.34])
def test_capacity_less_headroom_never_exceeded(headroom: float) -> None:
    policy = PlacementPolicy(mode="spread", max_copies=5, headroom=headroom)
    for seed, (instances, per, count) in enumerate(SHAPES):
        # Over-subscribed on purpose: twice the models the fleet holds.
        capacity = fleet(instances, per)
        placement = place(zipf_models(count * 2, seed=seed), capacity, policy)
        usable = max(1, int(per * (1 - headroom) + 1e-9))
        assert max(len(m) for m in placement.by_instance.values()) <= usable
        assert placement.copies == usable * instances  # full, yet within room
        assert len(placement.unplaced) > 0


def test_capacity_in_bytes_never_exceeded() -> None:
    for seed in range(5):
        models = zipf_models(80, seed=seed, sizes=True)
        size = {m.name: m.size_bytes or 0 for m in models}
        capacity = fleet(5, max_models=100, max_bytes=120_000_000)
        placement = place(models, capacity, SPREAD)
        for instance, names in placement.by_instance.items():
            assert sum(size[n] for n in names) <= 108_000_000, instance
        assert placement.unplaced  # 5 x 108 MB cannot hold 80 models of ~10 MB


def test_unknown_size_is_charged_the_largest_known() -> None:
    models = [ModelDemand("big", size_bytes=50), ModelDemand("a"), ModelDemand("b")]
    placement = place(models, fleet(1, max_models=None, max_bytes=100), PlacementPolicy(headroom=0))
    assert len(placement.holders) == 2  # 3 x 50 does not fit in 100


def test_replicate_caps_each_instance_in_warm_set_order() -> None:
    models = [ModelDemand(f"m{i}", demand=10 - i) for i in range(6)]
    placement = place(models, fleet(3, 5), PlacementPolicy(mode="replicate", headroom=0.2))
    assert placement.mode == "replicate"
    for names in placement.by_instance.values():
        assert names == {"m0", "m1", "m2", "m3"}
    assert set(placement.unplaced) == {"m4", "m5"}


def test_auto_replicates_only_when_the_warm_set_fits_everywhere() -> None:
    models = [ModelDemand(f"m{i}") for i in range(9)]
    assert place(models, fleet(3, 10), PlacementPolicy()).mode == "replicate"
    both = place(models, fleet(3, 10), PlacementPolicy())
    assert all(len(w) == 3 for w in both.holders.values())
    # 9 models, 10 slots less 10 % headroom: 9 fit; 10 models do not.
    more = [*models, ModelDemand("m9")]
    assert place(more, fleet(3, 10), PlacementPolicy()).mode == "spread"
    assert place(models, fleet(3, None), PlacementPolicy()).mode == "replicate"


def test_no_instances_places_nothing() -> None:
    placement = place([ModelDemand("m")], {}, SPREAD)
    assert placement.holders == {}
    assert placement.unplaced == ("m",)


# --- 5. determinism ----------------------------------------------------------------------------


def test_same_inputs_in_any_order_give_the_same_placement() -> None:
    for capacity, models in shapes():
        first = place(models, capacity, SPREAD)
        shuffled = list(models)
        random.Random(1).shuffle(shuffled)
        reordered = dict(reversed(list(capacity.items())))
        assert place(shuffled, reordered, SPREAD) == first


def test_another_process_computes_the_same_placement() -> None:
    """``hash()`` of a str differs per process; placement must not depend on it."""
    script = (
        "from tests.test_placement import shapes, SPREAD\n"
        "from router.placement import place\n"
        "for capacity, models in list(shapes())[:3]:\n"
        "    print(sorted(place(models, capacity, SPREAD).holders.items()))\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout
    here = "".join(
        f"{sorted(place(models, capacity, SPREAD).holders.items())}\n"
        for capacity, models in list(shapes())[:3]
    )
    assert other == here


def test_first_copy_is_first_in_ranking_with_room() -> None:
    capacity, models = fleet(8, 1000), zipf_models(100, seed=3)
    placement = place(models, capacity, SPREAD)
    for model, where in placement.holders.items():
        ranking = rank(model, capacity)
        assert where == tuple(ranking[: len(where)])


def test_ranking_spreads_first_choices_evenly() -> None:
    instances = list(fleet(10))
    firsts = [rank(f"model-{i}", instances)[0] for i in range(5000)]
    counts = [firsts.count(i) for i in instances]
    assert min(counts) > 400, counts  # 500 each, +-4.5 sigma
    assert max(counts) < 600, counts
    # Second choices too: after any first choice, every other instance comes next about as often.
    after_first = [
        rank(f"model-{i}", instances)[1] for i in range(5000) if firsts[i] == instances[0]
    ]
    seconds = [after_first.count(i) for i in instances[1:]]
    assert min(seconds) > len(after_first) / 9 / 3, seconds


# --- 6. stability ------------------------------------------------------------------------------


def moved(before: Placement, after: Placement) -> int:
    """Copies that appear somewhere new (each one is a load)."""
    return len(after.pairs() - before.pairs())


# Fleets about three quarters full, before and after the change, as with the default headroom. Near
# full, bounded loads cascade: a displaced copy takes the room of another model, which moves too.
STABLE_SHAPES = [(4, 10, 20), (6, 10, 35), (10, 20, 120), (30, 30, 600), (60, 40, 1600)]


def stable_shapes() -> Iterator[tuple[dict[str, Capacity], list[ModelDemand]]]:
    for seed, (instances, per, models) in enumerate(STABLE_SHAPES):
        yield fleet(instances, per), zipf_models(models, seed=seed)


def test_one_instance_joining_moves_at_most_about_2_over_n() -> None:
    for capacity, models in stable_shapes():
        before = place(models, capacity, SPREAD)
        grown = {**capacity, "http://10.9.9.9:8080": next(iter(capacity.values()))}
        after = place(models, grown, SPREAD)
        n = len(grown)
        assert moved(before, after) <= 2 * before.copies / n + 1, (n, moved(before, after))
        assert held(after) == held(before)


def test_one_instance_leaving_moves_at_most_about_2_over_n() -> None:
    for capacity, models in stable_shapes():
        before = place(models, capacity, SPREAD)
        for gone in sorted(capacity)[:3]:
            after = place(models, {k: v for k, v in capacity.items() if k != gone}, SPREAD)
            n = len(capacity)
            assert moved(before, after) <= 2 * before.copies / n + 1, (n, gone)
            assert held(after) == held(before)


def test_large_fleet_join_and_leave_move_about_1_over_n() -> None:
    models = zipf_models(3000, seed=11)
    capacity = fleet(40, 100)
    before = place(models, capacity, PlacementPolicy())
    grown = place(models, {**capacity, "http://10.9.9.9:8080": Capacity(max_models=100)}, SPREAD)
    shrunk = place(models, dict(list(capacity.items())[1:]), SPREAD)
    assert moved(before, grown) <= 1.5 * before.copies / 41
    assert moved(before, shrunk) <= 1.5 * before.copies / 40


def test_traffic_shift_moves_no_first_copy() -> None:
    """First copies do not depend on traffic: only extra copies follow a shift."""
    capacity = fleet(8, 30)
    models = zipf_models(150, seed=5)
    shifted = [ModelDemand(m.name, demand=1.0 / (m.demand + 1)) for m in models]  # reversed
    before, after = place(models, capacity, SPREAD), place(shifted, capacity, SPREAD)
    assert {(m, w[0]) for m, w in before.holders.items()} <= after.pairs()
    extra = before.copies - len(before.holders)
    assert moved(before, after) <= 2 * extra


# --- 7. loss -----------------------------------------------------------------------------------


def test_models_of_a_lost_instance_are_placed_again_and_others_stay() -> None:
    for capacity, models in stable_shapes():
        before = place(models, capacity, SPREAD)
        lost = sorted(capacity)[1]
        only_there = {m for m, w in before.holders.items() if w == (lost,)}
        assert only_there, "the lost instance held some model's only copy"
        after = place(models, {k: v for k, v in capacity.items() if k != lost}, SPREAD)
        assert held(after) == {m.name for m in models}
        assert all(lost not in w for w in after.holders.values())
        kept = {(m, i) for m, i in before.pairs() if i != lost}
        # Almost every surviving copy stays where it was.
        assert len(kept - after.pairs()) <= 2 * before.copies / len(capacity) + 1
