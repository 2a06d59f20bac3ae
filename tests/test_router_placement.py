"""The router on placed models, with the preloader, three real MLServer instances and Redis.

Eight models, ``max_models: 3``, ``headroom: 0.34``: one placed model per instance (m0, m1, m2, the
high-priority ones), two slots each for on-demand loads, five models the router must load on demand.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import redis.asyncio as aioredis

from router.placement import ModelDemand, place
from tenancy.models import Capacity, PlacementPolicy
from tests.placement_fixtures import MANY, Trio
from tests.preloader_fixtures import (
    IRIS_SAMPLE,
    PreloaderFactory,
    preloader_settings,
    v2_endpoint,
    warm_map,
)
from tests.router_fixtures import ConfigDir, RouterFactory, eventually

pytest_plugins = ("tests.preloader_fixtures",)

PLACED = ("m0", "m1", "m2")
POLICY = {"mode": "spread", "headroom": 0.34}
ADMIN = "admin-secret"


class Sampler:
    """Reads every instance's repository index in a thread, as often as it can, until stopped."""

    def __init__(self, instances: Trio) -> None:
        self.instances = instances
        self.samples: list[dict[str, set[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append({m.url: m.loaded_models() for m in self.instances})
            except OSError:
                continue
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def config(root: Path, urls: list[str]) -> ConfigDir:
    cfg = ConfigDir(root)
    cfg.endpoints({"mme": v2_endpoint(urls, capacity={"max_models": 3}, placement=POLICY)})
    for index, model in enumerate(MANY):
        priority = 10 if model in PLACED else 0
        cfg.tenant(f"t{index}", endpoint="mme", model=model,
                   preload={"sample": IRIS_SAMPLE, "priority": priority})  # fmt: skip
    return cfg


async def test_on_demand_loads_stay_within_capacity_and_placed_models_only_on_holders(
    tmp_path: Path,
    trio: Trio,
    preloader_redis_url: str,
    start_preloader: PreloaderFactory,
    start_router: RouterFactory,
) -> None:
    urls = [m.url for m in trio]
    cfg = config(tmp_path / "cfg", urls)
    expected = place(
        [ModelDemand(m, priority=10 if m in PLACED else 0) for m in MANY],
        dict.fromkeys(urls, Capacity(max_models=3)),
        PlacementPolicy(mode="spread", headroom=0.34),
    )
    holder = {m: expected.holders[m] for m in PLACED}
    assert set(expected.holders) == set(PLACED)
    router = await start_router(cfg, redis_url=preloader_redis_url, admin_token=ADMIN)
    await start_preloader(preloader_settings(cfg, preloader_redis_url))
    client = aioredis.Redis.from_url(preloader_redis_url)
    try:

        async def placed_published() -> bool:
            published = await warm_map(client, "mme")
            return all(m in published.get(h, []) for m, holders in holder.items() for h in holders)

        await eventually(placed_published, within_s=60)
        await asyncio.sleep(1.5)  # the router's warm map refreshes every second
    finally:
        await client.aclose()

    with Sampler(trio) as sampler:
        for _ in range(3):
            for index in range(len(MANY)):
                status, _, answer = await router.invoke(f"t{index}")
                assert status == 200, answer
        await asyncio.sleep(0.2)

    assert sampler.samples
    for sample in sampler.samples:
        for url, models in sample.items():
            assert len(models) <= 3, (url, models)  # capacity, counting on-demand loads
        for model in MANY:
            where = {url for url, models in sample.items() if model in models}
            if model in PLACED:
                assert where <= set(holder[model]), (model, where)  # only on its holder
            else:
                assert len(where) <= 1, (model, where)  # on demand: on ONE instance
    assert router.metric("router_ondemand_loads_total", endpoint="mme") >= len(MANY) - len(PLACED)

    async with router.session.get(
        f"{router.url}/v1/admin/endpoints", headers={"Authorization": f"Bearer {ADMIN}"}
    ) as resp:
        assert resp.status == 200
        listing = await resp.json()
    instances = listing["endpoints"]["mme"]["instances"]
    assert [i["url"] for i in instances] == urls
    for entry in instances:
        assert entry["placed"] == sorted(expected.models_on(entry["url"]))
        assert len(entry["models"]) <= 3


async def test_scale_out_moves_copies_without_a_cold_start(
    tmp_path: Path,
    trio: Trio,
    preloader_redis_url: str,
    start_preloader: PreloaderFactory,
    start_router: RouterFactory,
) -> None:
    """Two full instances (four models each, no headroom), traffic to all eight models; a third
    instance joins: copies move to it (loaded there first, unloaded from the old holder once the
    routers stopped sending there), and no request waits on a load."""
    urls = [m.url for m in trio]
    cfg = ConfigDir(tmp_path / "cfg")
    policy = {"mode": "spread", "headroom": 0}
    cfg.endpoints({"mme": v2_endpoint(urls[:2], capacity={"max_models": 4}, placement=policy)})
    for index, model in enumerate(MANY):
        cfg.tenant(f"t{index}", endpoint="mme", model=model, preload={"sample": IRIS_SAMPLE})
    router = await start_router(cfg, redis_url=preloader_redis_url)
    preloader = await start_preloader(preloader_settings(cfg, preloader_redis_url))

    async def warm() -> bool:
        return (await preloader.ready())[0] == 200

    await eventually(warm, within_s=90)
    await asyncio.sleep(1.5)  # the router's warm map
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            for index in range(len(MANY)):
                statuses.append((await router.invoke(f"t{index}"))[0])

    sender = asyncio.create_task(traffic())
    try:
        cfg.endpoints({"mme": v2_endpoint(urls, capacity={"max_models": 4}, placement=policy)})
        third = trio[2]

        async def moved_in() -> bool:
            try:
                held = await asyncio.to_thread(third.loaded_models)
            except OSError:  # busy: a loaded machine answers slowly
                return False
            return bool(held) and await warm()

        await eventually(moved_in, within_s=90)

        async def old_copies_unloaded() -> bool:  # past the retire grace, on a later pass
            unloads = preloader.metric(
                "preloader_unloads_total", endpoint="mme", reason="placement"
            )
            return unloads >= 1

        await eventually(old_copies_unloaded, within_s=60)
    finally:
        stop.set()
        await sender
    assert statuses
    assert set(statuses) == {200}
    assert router.metric("router_cold_starts_total") == 0
    assert preloader.metric("preloader_unloads_total", endpoint="mme", reason="placement") >= 1
