"""One instance's reconcile decisions (``preloader.instance_plan``): loads, make before break, idle
and capacity unloads. Pure; the same rules run on real MLServer instances in
``tests/test_preloader_placement.py``."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from preloader.instance_plan import InstanceView, Plan, plan

NOW = 10_000.0


def view(
    ready: Collection[str],
    placed: list[str],
    *,
    ours: Collection[str] = (),
    retiring: Mapping[str, float] | None = None,
    seen: Mapping[str, float] | None = None,
) -> InstanceView:
    return InstanceView(
        ready=frozenset(ready),
        placed=placed,
        ours=frozenset(ours),
        retiring=retiring or {},
        seen=seen if seen is not None else dict.fromkeys(ready, 0.0),  # here for ages
    )


def decide(
    v: InstanceView,
    *,
    capacity: int | None = 4,
    moved: Mapping[str, bool] | None = None,
    active: frozenset[str] | None = frozenset(),
) -> Plan:
    where = moved or {}
    return plan(
        v,
        now=NOW,
        capacity=capacity,
        moved=where.get,
        active=active,
        idle_s=600,
        grace_s=2,
    )


def test_loads_what_is_placed_and_missing_in_placement_order() -> None:
    steps = decide(view({"a"}, ["c", "a", "b"]))
    assert steps.load == ("c", "b")
    assert steps.unload == ()


def test_moved_copy_is_kept_until_every_new_holder_has_it() -> None:
    v = view({"a", "m"}, ["a"], ours={"a", "m"})
    assert decide(v, moved={"m": False}) == Plan()  # new copy not ready: keep, publish
    steps = decide(v, moved={"m": True})
    assert steps.retire == ("m",)  # ready there: stop publishing here first
    assert steps.unload == ()
    later = view({"a", "m"}, ["a"], ours={"a", "m"}, retiring={"m": NOW - 5})
    assert decide(later, moved={"m": True}).unload == (("m", "placement"),)
    just_now = view({"a", "m"}, ["a"], ours={"a", "m"}, retiring={"m": NOW - 1})
    assert decide(just_now, moved={"m": True}).unload == ()  # routers may not have seen it yet


def test_on_demand_model_unloaded_only_when_idle() -> None:
    old = view({"a", "x"}, ["a"], seen={"a": 0.0, "x": NOW - 700})
    assert decide(old, active=frozenset()).unload == (("x", "idle"),)
    assert decide(old, active=frozenset({"x"})).unload == ()  # still used
    assert decide(old, active=None).unload == ()  # traffic unknown (Redis down): keep
    young = view({"a", "x"}, ["a"], seen={"a": 0.0, "x": NOW - 100})
    assert decide(young, active=frozenset()).unload == ()  # loaded recently, counts not flushed yet


def test_room_for_placed_models_taken_from_unplaced_least_recent_first() -> None:
    v = view(
        {"p1", "x", "y", "z"},
        ["p1", "p2", "p3"],
        seen={"p1": 0.0, "x": NOW - 50, "y": NOW - 40, "z": NOW - 30},
    )
    steps = decide(v, capacity=4, active=frozenset({"x"}))
    # Two loads need two slots: y and z have no recent traffic (x has), y has been here longer.
    assert steps.unload == (("y", "capacity"), ("z", "capacity"))
    assert steps.load == ("p2", "p3")
    assert steps.short == ()


def test_a_moving_copy_is_never_unloaded_for_room() -> None:
    v = view({"p1", "m", "x"}, ["p1", "p2", "p3"], ours={"p1", "m"}, seen={"p1": 0, "m": 0, "x": 0})
    steps = decide(v, capacity=3, moved={"m": False}, active=frozenset({"x"}))
    assert steps.unload == (("x", "capacity"),)
    assert steps.load == ("p2",)
    assert steps.short == ("p3",)


def test_never_past_capacity() -> None:
    for held in range(5):
        ready = {f"p{i}" for i in range(held)}
        steps = decide(view(ready, [f"p{i}" for i in range(8)]), capacity=4)
        assert held - len(steps.unload) + len(steps.load) <= 4
