"""The Redis connection factory: URL forms, flags and environment of both processes, and real
servers over TLS (with ``--redis-ca``) and a unix socket."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from devstack.ports import free_port
from devstack.redis_server import RedisServer
from preloader.settings import parse_settings as preloader_settings
from router.keys import RATES, REDIS
from router.redis_conn import (
    PoolOptions,
    RedisTarget,
    RedisURLError,
    close_redis,
    open_redis,
    parse_sentinel_url,
    redact,
    validate,
)
from router.redis_keys import replicas_key
from router.settings import parse_settings as router_settings
from tests.router_fixtures import ConfigDir, RouterFactory


def test_sentinel_urls_name_every_sentinel_the_service_and_the_database() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:s3cret@h1:26379,h2,[::1]:26380/mymaster/2")
    assert parsed.sentinels == (("h1", 26379), ("h2", 26379), ("::1", 26380))
    assert (parsed.service, parsed.db, parsed.password) == ("mymaster", 2, "s3cret")
    assert parse_sentinel_url("redis+sentinel://h1/svc").db == 0
    for bad in (
        "redis+sentinel://h1:26379",  # no service
        "redis+sentinel://h1:26379/svc/x",  # database not a number
        "redis+sentinel://h1:port/svc",
        "redis+sentinel://h1,,h2/svc",
    ):
        with pytest.raises(RedisURLError):
            parse_sentinel_url(bad)


def test_passwords_never_reach_messages() -> None:
    assert redact("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("rediss://user:pw@host/0") == "rediss://user:***@host/0"
    with pytest.raises(RedisURLError) as caught:
        validate(RedisTarget(url="http://:pw@host/0"))
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redis-url", "memcached://h:1"], "unsupported Redis URL scheme"),
        (["--redis-url", "redis://h:1/0", "--redis-ca", "ca.pem"], "--redis-ca is for rediss://"),
        (
            ["--redis-url", "redis+sentinel://h:26379/m/0", "--redis-cluster"],
            "--redis-cluster takes a redis:// or rediss:// URL",
        ),
        (["--redis-url", "unix:///tmp/r.sock", "--redis-cluster"], "--redis-cluster needs"),
    ],
)
@pytest.mark.parametrize("parse", [router_settings, preloader_settings])
def test_both_processes_refuse_a_redis_setting_that_cannot_work(
    parse: object, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(parse)
    with pytest.raises(SystemExit) as exited:
        parse(["--config", "cfg", *argv], {})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_flags_and_environment_reach_both_processes() -> None:
    env = {"WARMROUTE_REDIS_CLUSTER": "true", "WARMROUTE_REDIS_URL": "redis://node-1:7000/0"}
    for parse in (router_settings, preloader_settings):
        target = parse(["--config", "cfg"], env).redis_target
        assert target == RedisTarget(url="redis://node-1:7000/0", cluster=True)
        tls = parse(
            ["--config", "cfg", "--redis-url", "rediss://h:6380/0", "--redis-ca", "/ca.pem"], {}
        ).redis_target
        assert tls == RedisTarget(url="rediss://h:6380/0", ca_file="/ca.pem")


# --- real servers ---------------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(rediss:// URL, CA file) of a Redis that speaks only TLS, its certificate signed by a test CA."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=warmroute-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.crt", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    tls_port = free_port()
    tls_args = {
        "--tls-port": str(tls_port),
        "--tls-cert-file": str(tmp_path / "srv.crt"),
        "--tls-key-file": str(tmp_path / "srv.key"),
        "--tls-ca-cert-file": str(tmp_path / "ca.crt"),
        "--tls-auth-clients": "no",
    }
    try:
        server = RedisServer(extra_args=[item for pair in tls_args.items() for item in pair])
    except RuntimeError as exc:
        pytest.skip(f"this redis-server has no TLS: {exc}")
    try:
        yield f"rediss://127.0.0.1:{tls_port}/0", tmp_path / "ca.crt"
    finally:
        server.stop()


async def test_tls_needs_and_uses_the_ca_file(tls_redis: tuple[str, Path]) -> None:
    url, ca = tls_redis
    client = open_redis(RedisTarget(url=url, ca_file=str(ca)), PoolOptions())
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await close_redis(client)
    stranger = open_redis(RedisTarget(url=url), PoolOptions(retries=0))  # system CAs only
    try:
        with pytest.raises(RedisConnectionError):
            await stranger.ping()
    finally:
        await close_redis(stranger)


@pytest.fixture
def socket_redis(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "redis.sock"
    server = RedisServer(extra_args=["--unixsocket", str(path), "--unixsocketperm", "700"])
    try:
        yield path
    finally:
        server.stop()


async def test_router_on_a_unix_socket(
    socket_redis: Path, tmp_path: Path, start_router: RouterFactory
) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": ["http://127.0.0.1:9"]}})
    cfg.tenant("acme", endpoint="mme", model="m", limits={"rps": 10})
    router = await start_router(cfg, redis_url=f"unix://{socket_redis}?db=3")
    assert router.app[RATES].replicas == 1
    # The heartbeat went through the socket into database 3.
    assert await router.app[REDIS].zcard(replicas_key()) == 1
