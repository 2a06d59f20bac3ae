"""Open the Redis pool before the router takes traffic: a cold pool is no outage (SPEC rule 2).

A replica that has just started and meets a burst would otherwise open one connection per concurrent
request, each a TCP handshake plus a HELLO/SELECT round trip, and the first sticky call would also pay
the script's NOSCRIPT round trip. On a busy machine several of those take longer than the 20 ms
budget, the breaker opens, and the hash moves units that Redis remembers. So start-up opens
``connections`` pooled connections and loads the Lua scripts first; the app does this before it
listens, so ``/readyz`` can only answer 200 once the pool is warm.

Redis is still never a dependency: a Redis that is down or slow at start-up costs at most
``timeout_s`` once, is logged, and the pool then fills lazily as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import RedisError

from router.redis_conn import RedisClient

ScriptText = str | bytes | memoryview

log = logging.getLogger(__name__)

# Enough for a burst of the router's concurrency on one replica (a 48-request burst was measured to
# trip the budget cold); well under the pool's 128.
WARM_CONNECTIONS = 64
_CONCURRENCY = 8


async def warm_pool(
    client: RedisClient,
    *,
    connections: int = WARM_CONNECTIONS,
    scripts: Iterable[ScriptText] = (),
    timeout_s: float = 2.0,
) -> int:
    """Open up to ``connections`` pooled connections and load ``scripts``; the number opened.

    Failures are logged, never raised.
    """
    held: list[AbstractConnection] = []
    opened = 0
    try:
        async with asyncio.timeout(timeout_s):
            for script in scripts:
                await client.script_load(script)
            if isinstance(client, aioredis.Redis):
                opened = await _open(client.connection_pool, connections, held)
            else:
                # Redis Cluster keeps a pool per node: concurrent PINGs open connections to the
                # nodes they reach, best effort.
                await asyncio.gather(*(client.ping() for _ in range(connections)))
                opened = connections
    except (RedisError, OSError, TimeoutError) as exc:
        opened = len(held)
        log.warning(
            "redis pool warmed only to %d of %d connections at start-up (%r): the rest open on "
            "first use",
            opened,
            connections,
            exc,
        )
    finally:
        pool = client.connection_pool if isinstance(client, aioredis.Redis) else None
        for connection in held:
            if pool is not None:
                await pool.release(connection)
    return opened


async def _open(pool: ConnectionPool, connections: int, held: list[AbstractConnection]) -> int:
    """Hold connections until ``connections`` are open (so the pool creates each one rather than
    handing back the same), a few at a time: the pool's connect timeout is the request budget's,
    which a burst of simultaneous connects on a busy machine can miss. Failed connects retry."""
    while len(held) < connections:
        batch = min(_CONCURRENCY, connections - len(held))
        got = await asyncio.gather(
            *(pool.get_connection() for _ in range(batch)),  # type: ignore[no-untyped-call]
            return_exceptions=True,
        )
        failed: list[BaseException] = []
        for item in got:
            if isinstance(item, AbstractConnection):
                held.append(item)
            else:
                failed.append(item)
        if len(failed) == batch:
            raise failed[0]  # none connected: down, not slow; do not hold start-up any longer
        if failed:
            await asyncio.sleep(0.01)  # a busy machine: give it a moment, then the rest
    return len(held)
