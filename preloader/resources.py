"""The clients the preloader shares, each an async context manager: the app's cleanup contexts and
``--once`` open them the same way, once per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from router.backends.sagemaker import SageMakerClients
from router.redis_conn import PoolOptions, RedisClient, RedisTarget, close_redis, open_redis


@asynccontextmanager
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """One pooled session for every v2 instance (loads, warm-ups, index reads)."""
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=64, keepalive_timeout=30, ttl_dns_cache=10
    )
    async with aiohttp.ClientSession(
        connector=connector, skip_auto_headers=("User-Agent",)
    ) as session:
        yield session


@asynccontextmanager
async def redis_client(target: RedisTarget) -> AsyncIterator[RedisClient]:
    """Redis for the lock, the warm map and the traffic counters; bounded waits, never hangs.

    One retry: a call that meets a Sentinel failover or a Cluster slot move asks again once.
    """
    client = open_redis(
        target,
        PoolOptions(
            max_connections=32,
            connect_timeout_s=2.0,
            socket_timeout_s=5.0,
            retries=1,
            health_check_interval_s=30.0,
        ),
    )
    try:
        yield client
    finally:
        await close_redis(client)


@asynccontextmanager
async def sagemaker_clients() -> AsyncIterator[SageMakerClients]:
    """The router's client cache: one runtime and one control-plane client per region and URL."""
    clients = SageMakerClients(max_pool_connections=64)
    try:
        yield clients
    finally:
        await clients.aclose()
