"""The clients the preloader shares, each an async context manager: the app's cleanup contexts and
``--once`` open them the same way, once per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import redis.asyncio as aioredis

from router.backends.sagemaker import SageMakerClients


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
async def redis_client(url: str) -> AsyncIterator[aioredis.Redis]:
    """Redis for the lock, the warm map and the traffic counters; bounded waits, never hangs."""
    client = aioredis.Redis.from_url(
        url, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=30
    )
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def sagemaker_clients() -> AsyncIterator[SageMakerClients]:
    """The router's client cache: one runtime and one control-plane client per region and URL."""
    clients = SageMakerClients(max_pool_connections=64)
    try:
        yield clients
    finally:
        await clients.aclose()
