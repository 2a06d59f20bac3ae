"""/readyz with --wait-for-warm: only endpoints in use wait, and once ready a process stays ready."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from router.redis_keys import warm_flag_key
from tests.router_fixtures import ConfigDir, RouterFactory, RunningRouter


async def ready(router: RunningRouter) -> int:
    async with router.session.get(f"{router.url}/readyz") as resp:
        return resp.status


async def test_an_endpoint_added_later_keeps_a_ready_router_ready(
    mme_config: ConfigDir, start_router: RouterFactory, redis_url: str, fresh_mlservers: Any
) -> None:
    mme_config.tenant("acme", endpoint="mme", model="iris-lr")
    router = await start_router(mme_config, wait_for_warm=True)
    assert await ready(router) == 503
    client = aioredis.Redis.from_url(redis_url)
    await client.set(warm_flag_key("mme"), "1")
    assert await ready(router) == 200
    urls = [m.url for m in fresh_mlservers]
    # An endpoint no tenant uses yet, then a tenant on it: the preloader has warmed neither.
    mme_config.endpoints(
        {"mme": {"kind": "v2", "instances": urls}, "spare": {"kind": "v2", "instances": urls}}
    )
    await router.reload()
    assert await ready(router) == 200
    mme_config.tenant("beta", endpoint="spare", model="iris-tree")
    await router.reload()
    assert await ready(router) == 200
    await client.aclose()


async def test_an_unused_endpoint_does_not_hold_a_new_router_back(
    mme_config: ConfigDir, start_router: RouterFactory, redis_url: str, fresh_mlservers: Any
) -> None:
    urls = [m.url for m in fresh_mlservers]
    mme_config.endpoints(
        {"mme": {"kind": "v2", "instances": urls}, "spare": {"kind": "v2", "instances": urls}}
    )
    mme_config.tenant("acme", endpoint="mme", model="iris-lr")
    client = aioredis.Redis.from_url(redis_url)
    await client.set(warm_flag_key("mme"), "1")
    await client.aclose()
    router = await start_router(mme_config, wait_for_warm=True)
    assert await ready(router) == 200
