"""Router settings: flags, each with a WARMROUTE_* environment equivalent (flag wins)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from router.redis_conn import RedisTarget, add_redis_arguments, target_from_args
from tenancy.text import DefaultsHelpFormatter

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    config_dir: Path
    host: str = "0.0.0.0"
    port: int = 8080
    redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False
    redis_ca: str | None = None
    admin_token: str | None = None
    redis_budget_ms: float = 20.0
    shutdown_timeout_s: float = 20.0
    reload_interval_s: float = 0.5
    rollout_interval_s: float = 0.5  # how often a replica flushes, reads and judges rollouts
    wait_for_warm: bool = False
    instance_id: str = ""
    access_log: bool = False

    @property
    def redis_target(self) -> RedisTarget:
        return RedisTarget(url=self.redis_url, cluster=self.redis_cluster, ca_file=self.redis_ca)


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def parse_settings(
    argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m router",
        description="warmroute data plane (each flag also reads its WARMROUTE_* variable)",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--config", default=env.get("WARMROUTE_CONFIG"), help="config directory")
    parser.add_argument(
        "--host", default=env.get("WARMROUTE_HOST", "0.0.0.0"), help="address to listen on"
    )
    parser.add_argument(
        "--port", type=int, default=int(env.get("WARMROUTE_PORT", "8080")), help="port to listen on"
    )
    add_redis_arguments(parser, env, DEFAULT_REDIS_URL)
    # The token is read from the environment after parsing, so --help never prints it.
    parser.add_argument(
        "--admin-token",
        default=None,
        help="bearer token the /v1/admin routes require (default: WARMROUTE_ADMIN_TOKEN; "
        "unset: admin routes are open)",
    )
    parser.add_argument(
        "--redis-budget-ms",
        type=float,
        default=float(env.get("WARMROUTE_REDIS_BUDGET_MS", "20")),
        help="longest a request waits on Redis before deciding by hash",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=float(env.get("WARMROUTE_SHUTDOWN_TIMEOUT", "20")),
        help="seconds in-flight requests get to finish after SIGTERM",
    )
    parser.add_argument(
        "--wait-for-warm",
        action="store_true",
        default=_env_bool(env.get("WARMROUTE_WAIT_FOR_WARM")),
        help="/readyz stays 503 until the preloader reports every endpoint warm",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        default=_env_bool(env.get("WARMROUTE_ACCESS_LOG")),
        help="log one JSON line per request (logger warmroute.access; off by default)",
    )
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config DIR (or WARMROUTE_CONFIG) is required")
    target = target_from_args(parser, args)
    return Settings(
        config_dir=Path(args.config),
        host=args.host,
        port=args.port,
        redis_url=target.url,
        redis_cluster=target.cluster,
        redis_ca=target.ca_file,
        admin_token=args.admin_token or env.get("WARMROUTE_ADMIN_TOKEN") or None,
        redis_budget_ms=args.redis_budget_ms,
        shutdown_timeout_s=args.shutdown_timeout,
        wait_for_warm=args.wait_for_warm,
        access_log=args.access_log,
    )
