"""One way to open Redis for the router and the preloader, whatever the topology.

- ``redis://``, ``rediss://`` (TLS; ``--redis-ca FILE`` or the URL's ``ssl_ca_certs=`` /
  ``ssl_cert_reqs=`` options) and ``unix://``: one server, through a pool.
- ``redis+sentinel://[:PASSWORD@]H1:26379,H2:26379/NAME[/DB]``: the master Sentinel names NAME; the
  pool asks the sentinels again after a connection error, so a failover costs the calls in flight
  only. The password is the master's; sentinels are asked without one.
- ``--redis-cluster`` (``WARMROUTE_REDIS_CLUSTER=true``) with a ``redis://`` or ``rediss://`` URL of any
  node: Redis Cluster. Only database 0 exists there; every key carries a hash tag so each script and
  each transaction touches one slot.

Both client kinds answer the same commands, so callers take a ``RedisClient`` and never look at the
topology.
"""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

RedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


class RedisURLError(ValueError):
    """A Redis URL or flag combination the factory cannot open."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisTarget:
    """Where Redis is: the URL plus what a URL cannot say."""

    url: str
    cluster: bool = False
    ca_file: str | None = None

    def describe(self) -> str:
        """The URL without its password, for logs and errors."""
        return redact(self.url) + (" (cluster)" if self.cluster else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolOptions:
    """How the process uses its connections (the router and the preloader differ)."""

    max_connections: int = 64
    connect_timeout_s: float = 2.0
    socket_timeout_s: float = 5.0
    # Set: past max_connections a call waits this long for a free connection instead of failing
    # (single server only; Sentinel and Cluster pools fail at once, inside the caller's budget).
    wait_timeout_s: float | None = None
    retries: int = 0
    health_check_interval_s: float = 0.0


@dataclass(frozen=True, slots=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None
    username: str | None


def add_redis_arguments(
    parser: argparse.ArgumentParser, env: Mapping[str, str], default_url: str
) -> None:
    """``--redis-url``, ``--redis-cluster``, ``--redis-ca``: the same flags for both processes."""
    parser.add_argument(
        "--redis-url",
        default=env.get("WARMROUTE_REDIS_URL", default_url),
        help=f"redis://, rediss://, unix:// or {SENTINEL_SCHEME}://H1:P1,H2:P2/NAME/DB",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        default=(env.get("WARMROUTE_REDIS_CLUSTER") or "").strip().lower()
        in {"1", "true", "yes", "on"},
        help="the URL names a node of a Redis Cluster",
    )
    parser.add_argument(
        "--redis-ca",
        default=env.get("WARMROUTE_REDIS_CA") or None,
        metavar="FILE",
        help="CA bundle (PEM) that signed the rediss:// server's certificate",
    )


def target_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RedisTarget:
    target = RedisTarget(url=args.redis_url, cluster=args.redis_cluster, ca_file=args.redis_ca)
    try:
        validate(target)
    except RedisURLError as exc:
        parser.error(str(exc))
    return target


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


def parse_sentinel_url(url: str) -> SentinelURL:
    """``redis+sentinel://[user:pass@]h1:p1,h2:p2/NAME[/DB]`` -> its parts."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise RedisURLError(f"not a {SENTINEL_SCHEME}:// URL: {redact(url)}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = None, None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) or None
    sentinels: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, port = _host_port(item.strip(), url)
        sentinels.append((host, port))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise RedisURLError(
            f"{redact(url)}: expected {SENTINEL_SCHEME}://HOST:PORT[,HOST:PORT]/NAME[/DB]"
        )
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError as exc:
        raise RedisURLError(f"{redact(url)}: database {path[1]!r} is not a number") from exc
    return SentinelURL(tuple(sentinels), urllib.parse.unquote(path[0]), db, password, username)


def _host_port(item: str, url: str) -> tuple[str, int]:
    if not item:
        raise RedisURLError(f"{redact(url)}: empty sentinel address")
    if item.startswith("["):  # [::1]:26379
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    try:
        port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
    except ValueError as exc:
        raise RedisURLError(f"{redact(url)}: bad port in {item!r}") from exc
    return host, port


def validate(target: RedisTarget) -> None:
    """Refuse at start what cannot work, with a message naming the URL (never its password)."""
    scheme = urllib.parse.urlsplit(target.url).scheme
    if scheme == SENTINEL_SCHEME:
        if target.cluster:
            raise RedisURLError("--redis-cluster takes a redis:// or rediss:// URL, not Sentinel")
        parse_sentinel_url(target.url)
        return
    if scheme not in {"redis", "rediss", "unix"}:
        raise RedisURLError(
            f"unsupported Redis URL scheme {scheme!r} in {redact(target.url)}: use redis://, "
            f"rediss://, unix:// or {SENTINEL_SCHEME}://"
        )
    if target.cluster and scheme == "unix":
        raise RedisURLError("--redis-cluster needs a redis:// or rediss:// URL of a cluster node")
    if target.ca_file and scheme != "rediss":
        raise RedisURLError(f"--redis-ca is for rediss:// URLs, not {redact(target.url)}")


def open_redis(target: RedisTarget, options: PoolOptions) -> RedisClient:
    """A client for ``target``; close it with ``close_redis``. Opens no connection yet."""
    validate(target)
    common: dict[str, Any] = {
        "socket_connect_timeout": options.connect_timeout_s,
        "socket_timeout": options.socket_timeout_s,
        "health_check_interval": options.health_check_interval_s,
        "retry": Retry(NoBackoff(), options.retries),
    }
    if target.ca_file:
        common["ssl_ca_certs"] = target.ca_file
    if target.cluster:
        return aioredis.RedisCluster.from_url(
            target.url, max_connections=options.max_connections, **common
        )
    if target.url.startswith(SENTINEL_SCHEME + "://"):
        return _sentinel_master(parse_sentinel_url(target.url), options, common)
    pool: aioredis.ConnectionPool
    if options.wait_timeout_s is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            target.url,
            max_connections=options.max_connections,
            timeout=options.wait_timeout_s,
            **common,
        )
    else:
        pool = aioredis.ConnectionPool.from_url(
            target.url, max_connections=options.max_connections, **common
        )
    return aioredis.Redis(connection_pool=pool)


def _sentinel_master(
    parsed: SentinelURL, options: PoolOptions, common: dict[str, Any]
) -> aioredis.Redis:
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        list(parsed.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": options.connect_timeout_s,
            "socket_timeout": options.socket_timeout_s,
        },
    )
    client: aioredis.Redis = sentinel.master_for(
        parsed.service,
        db=parsed.db,
        password=parsed.password,
        username=parsed.username,
        max_connections=options.max_connections,
        **common,
    )
    return client


async def close_redis(client: RedisClient) -> None:
    """Close the client, its pool and (Sentinel) its connections to the sentinels."""
    if isinstance(client, aioredis.RedisCluster):
        await client.aclose()
        return
    pool = client.connection_pool
    await client.aclose(close_connection_pool=True)
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose(close_connection_pool=True)
