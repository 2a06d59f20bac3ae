"""The preloader places the warm set on real MLServer instances that each hold a fraction of it.

Three instances, eight models, ``capacity.max_models: 4`` with ``headroom: 0.25`` (three placed models
per instance, one slot for on-demand loads): no instance can hold the warm set, together they hold it
with one slot to spare for a second copy of the busiest model.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis

from devstack.mlserver import MLServerInstance
from preloader.once import run_once
from preloader.progress import Progress
from router.placement import ModelDemand, place
from router.redis_keys import traffic_key
from tenancy.models import Capacity, PlacementPolicy
from tests.placement_fixtures import MANY, Trio, many_tenants
from tests.preloader_fixtures import PreloaderFactory, preloader_settings, warm_map
from tests.router_fixtures import ConfigDir, eventually

pytest_plugins = ("tests.preloader_fixtures",)

PLACEMENT = {"mode": "auto", "max_copies": 2, "headroom": 0.25}
CAPACITY = {"max_models": 4}


async def seed_traffic(client: aioredis.Redis, counts: dict[str, int]) -> None:
    """Recent traffic as the router's counters record it."""
    key = traffic_key("mme", int(time.time() // 60))
    for model, count in counts.items():
        await client.hincrby(key, model, count)


def loaded(trio: Trio) -> dict[str, set[str]]:
    return {m.url: m.loaded_models() for m in trio}


async def test_one_pass_covers_every_model_with_copies_by_demand(
    tmp_path: Path, trio: Trio, preloader_redis_url: str, redis_client: aioredis.Redis
) -> None:
    """After one pass every model is loaded somewhere, no instance holds more than its share, the
    busiest model is on two instances, and what is loaded is exactly what ``place`` computes (any
    other preloader would compute the same); the warm map says who holds what."""
    urls = [m.url for m in trio]
    cfg = ConfigDir(tmp_path / "cfg")
    many_tenants(cfg, urls, capacity=CAPACITY, placement=PLACEMENT)
    await seed_traffic(redis_client, {"m5": 500, "m1": 20, "m2": 10})

    result = await run_once(
        preloader_settings(cfg, preloader_redis_url), progress=Progress(tty=False)
    )
    assert result.ok, [f.line() for f in result.failures]

    held = loaded(trio)
    assert set().union(*held.values()) == set(MANY)  # coverage
    assert all(len(models) <= 3 for models in held.values())  # capacity less headroom
    assert sum("m5" in models for models in held.values()) == 2  # demand
    assert all(sum(m in models for models in held.values()) == 1 for m in MANY if m != "m5")

    demand = {"m5": 500, "m1": 20, "m2": 10}
    expected = place(
        [ModelDemand(m, demand=demand.get(m, 0)) for m in MANY],
        dict.fromkeys(urls, Capacity(max_models=4)),
        PlacementPolicy(**PLACEMENT),
    )
    assert held == {url: set(expected.models_on(url)) for url in urls}  # determinism
    published = await warm_map(redis_client, "mme")
    assert {u: set(m) for u, m in published.items()} == held


async def test_watch_heals_after_an_instance_is_killed_and_unloads_moved_copies(
    tmp_path: Path,
    trio: Trio,
    preloader_redis_url: str,
    redis_client: aioredis.Redis,
    start_preloader: PreloaderFactory,
) -> None:
    """An instance dies: within a pass its models are loaded on the survivors (which then hold
    4 each, the whole capacity: the headroom is kept only while the fleet has room). It comes back
    empty: its share moves back, and the survivors unload the copies that moved, each only once
    it is loaded on its new holder (make before break)."""
    urls = [m.url for m in trio]
    cfg = ConfigDir(tmp_path / "cfg")
    # No headroom here: two instances of four hold all eight models once.
    many_tenants(cfg, urls, capacity=CAPACITY, placement={"mode": "spread", "headroom": 0})
    preloader = await start_preloader(preloader_settings(cfg, preloader_redis_url))

    async def covered(instances: tuple[MLServerInstance, ...]) -> bool:
        try:
            held = await asyncio.to_thread(lambda: [m.loaded_models() for m in instances])
        except OSError:
            return False
        return set().union(*held) == set(MANY)

    await eventually(lambda: covered(trio), within_s=60)
    victim, survivors = trio[2], trio[:2]
    victim.kill()
    await eventually(lambda: covered(survivors), within_s=60)
    for instance in survivors:
        assert len(instance.loaded_models()) <= 4

    await asyncio.to_thread(victim.restart, 180.0)
    expected = place(
        [ModelDemand(m) for m in MANY],
        dict.fromkeys(urls, Capacity(max_models=4)),
        PlacementPolicy(mode="spread", headroom=0),
    )

    gaps: list[set[str]] = []  # models held nowhere at some sample while copies moved back

    async def back_in_place() -> bool:
        try:
            held = await asyncio.to_thread(loaded, trio)
        except OSError:  # the restarted instance may still be busy starting
            return False
        if missing := set(MANY) - set().union(*held.values()):
            gaps.append(missing)
        return held == {url: set(expected.models_on(url)) for url in urls}

    await eventually(back_in_place, within_s=60)
    assert gaps == [], "a model was unloaded before its new copy was loaded"
    assert preloader.metric("preloader_unloads_total", endpoint="mme", reason="placement") >= 1
    assert preloader.metric("preloader_placed_models", endpoint="mme") == len(MANY)
    assert preloader.metric("preloader_copies", endpoint="mme") == expected.copies
