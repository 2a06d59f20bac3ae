"""Preloader settings: flags, each with a WARMROUTE_* environment equivalent (the flag wins)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from router.redis_conn import RedisTarget, add_redis_arguments, target_from_args
from tenancy.text import DefaultsHelpFormatter

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PORT = 9090


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    config_dir: Path
    redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False
    redis_ca: str | None = None
    once: bool = False
    # Sidecar mode: warm this one local v2 instance with the warm set of ``endpoint``.
    sidecar_url: str | None = None
    endpoint: str | None = None
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    # How often each instance is checked (restarted empty? new model?) and the warm map republished
    # (the router ignores entries older than 30 s, router.warm_map.STALE_AFTER_S). An index read
    # costs the instance a few milliseconds; the interval bounds how long an instance that restarted
    # empty between two checks can still be listed warm.
    check_interval_s: float = 2.0
    # Cluster mode: the per-endpoint leader lock's expiry; renewed every third of it.
    lock_ttl_s: float = 15.0
    # ``wr:warm:{endpoint}`` expires unless refreshed: a dead preloader stops vouching.
    warm_flag_ttl_s: float = 30.0
    reload_interval_s: float = 0.5
    load_timeout_s: float = 120.0
    shutdown_timeout_s: float = 10.0
    # Who holds a lock (logs and the lock's value); default: host name and process id.
    instance_id: str = ""

    @property
    def redis_target(self) -> RedisTarget:
        return RedisTarget(url=self.redis_url, cluster=self.redis_cluster, ca_file=self.redis_ca)


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    return float(env.get(name, str(default)))


def parse_settings(
    argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m preloader",
        description="warmroute preloader: load models into multi-model endpoints before traffic "
        "(each flag also reads its WARMROUTE_* variable)",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--config", default=env.get("WARMROUTE_CONFIG"), help="config directory")
    add_redis_arguments(parser, env, DEFAULT_REDIS_URL)
    parser.add_argument(
        "--once",
        action="store_true",
        help="warm everything once and exit: 0 only when the whole warm set is warm everywhere",
    )
    parser.add_argument(
        "--sidecar",
        metavar="URL",
        default=env.get("WARMROUTE_PRELOADER_SIDECAR") or None,
        help="sidecar mode: warm only this local v2 instance and serve its /ready",
    )
    parser.add_argument(
        "--endpoint",
        default=env.get("WARMROUTE_PRELOADER_ENDPOINT") or None,
        help="sidecar mode: whose warm set (default: the config's only v2 endpoint)",
    )
    parser.add_argument(
        "--host",
        default=env.get("WARMROUTE_PRELOADER_HOST", "0.0.0.0"),
        help="address of /healthz, /ready, /metrics",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("WARMROUTE_PRELOADER_PORT", str(DEFAULT_PORT))),
        help="port of /healthz, /ready, /metrics",
    )
    parser.add_argument(
        "--check-interval",
        type=float,
        default=_float_env(env, "WARMROUTE_PRELOADER_CHECK_INTERVAL", 2.0),
        help="seconds between checks of each instance (and republishing the warm map)",
    )
    parser.add_argument(
        "--lock-ttl",
        type=float,
        default=_float_env(env, "WARMROUTE_PRELOADER_LOCK_TTL", 15.0),
        help="cluster mode: seconds before a dead leader's lock expires",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=_float_env(env, "WARMROUTE_SHUTDOWN_TIMEOUT", 10.0),
        help="seconds loads in flight get to finish after SIGTERM",
    )
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config DIR (or WARMROUTE_CONFIG) is required")
    if args.endpoint and not args.sidecar:
        parser.error("--endpoint only applies with --sidecar URL")
    for name in ("check_interval", "lock_ttl"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    target = target_from_args(parser, args)
    return Settings(
        config_dir=Path(args.config),
        redis_url=target.url,
        redis_cluster=target.cluster,
        redis_ca=target.ca_file,
        once=args.once,
        sidecar_url=args.sidecar.rstrip("/") if args.sidecar else None,
        endpoint=args.endpoint,
        host=args.host,
        port=args.port,
        check_interval_s=args.check_interval,
        lock_ttl_s=args.lock_ttl,
        shutdown_timeout_s=args.shutdown_timeout,
    )
