"""Every row of SPEC.md's error table, produced the way a caller would meet it."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.redis_keys import warm_flag_key
from tests.router_fixtures import ConfigDir, RouterFactory, RunningRouter, sha


@pytest.fixture
def config(tmp_path: Path, fresh_mlservers: list[Any]) -> ConfigDir:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers]}})
    cfg.tenant("acme", endpoint="mme", model="iris-lr", auth={"api_key_sha256": [sha("acme-key")]})
    cfg.tenant(
        "globex",
        endpoint="mme",
        model="iris-tree",
        auth={"api_key_sha256": [sha("globex-key"), sha("globex-key-2")]},
    )
    cfg.tenant("small", endpoint="mme", model="iris-tree", limits={"max_body_bytes": 100})
    cfg.tenant("ghost", endpoint="mme", model="no-such-model")
    return cfg


def error_of(status: int, headers: Mapping[str, str], body: bytes, expected: int, code: str) -> str:
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert error["code"] == code
    assert error["request_id"] == headers["X-Request-Id"]
    assert isinstance(error["message"], str)
    assert error["message"]
    message: str = error["message"]
    return message


@contextlib.contextmanager
def paused(instances: list[Any]) -> Iterator[None]:
    for instance in instances:
        instance.pause()
    try:
        yield
    finally:
        for instance in instances:
            instance.resume()


async def test_400_when_the_model_rejects_the_input(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    response = await router.invoke("globex", b'{"inputs": "not a list"}', key="globex-key")
    message = error_of(*response, 400, "invalid_request")
    assert "rejected" in message


async def test_401_missing_and_wrong_key(config: ConfigDir, start_router: RouterFactory) -> None:
    router = await start_router(config)
    error_of(*await router.invoke("acme"), 401, "unauthorized")
    error_of(*await router.invoke("acme", key="guess"), 401, "unauthorized")
    error_of(
        *await router.invoke("acme", headers={"Authorization": "Basic eA=="}), 401, "unauthorized"
    )
    status, _, _ = await router.invoke("acme", key="acme-key")
    assert status == 200


async def test_403_key_of_another_tenant(config: ConfigDir, start_router: RouterFactory) -> None:
    router = await start_router(config)
    error_of(*await router.invoke("acme", key="globex-key-2"), 403, "forbidden")
    # A tenant with several keys accepts each of them.
    assert (await router.invoke("globex", key="globex-key-2"))[0] == 200


async def test_404_unknown_tenant_is_counted_as_unknown(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    error_of(*await router.invoke("nobody"), 404, "tenant_not_found")
    assert router.metric("router_requests_total", tenant="_unknown", code="404") == 1


async def test_413_from_content_length_before_reading(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    error_of(*await router.invoke("small", b"x" * 101), 413, "payload_too_large")
    assert (await router.invoke("small", b"x" * 100))[0] != 413


async def test_413_while_streaming_a_chunked_body(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"y" * 10

    async with router.session.post(
        f"{router.url}/v1/tenants/small/invocations", data=chunks()
    ) as resp:
        body = await resp.read()
        assert "Content-Length" not in resp.request_info.headers
        error_of(resp.status, resp.headers, body, 413, "payload_too_large")


async def test_413_default_limit_is_6_mb(config: ConfigDir, start_router: RouterFactory) -> None:
    router = await start_router(config)
    headers = {"Authorization": "Bearer globex-key"}
    for size, expected in [(6 * 1024 * 1024 + 1, 413), (6 * 1024 * 1024, 400)]:
        async with router.session.post(
            f"{router.url}/v1/tenants/globex/invocations",
            data=io.BytesIO(b"x" * size),
            headers=headers,
        ) as resp:
            # At exactly the limit the body is forwarded (and the model rejects it: not JSON).
            assert resp.status == expected, await resp.text()


async def test_429_over_the_rate_with_retry_after(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    config.tenant("busy", endpoint="mme", model="iris-tree", limits={"rps": 0.01, "burst": 2})
    router = await start_router(config)
    assert (await router.invoke("busy"))[0] == 200
    assert (await router.invoke("busy"))[0] == 200
    status, headers, body = await router.invoke("busy")
    error_of(status, headers, body, 429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    # Other tenants are unaffected by one tenant's limit.
    assert (await router.invoke("globex", key="globex-key"))[0] == 200


async def test_429_over_the_concurrency_limit(
    config: ConfigDir, start_router: RouterFactory, fresh_mlservers: list[Any]
) -> None:
    config.tenant("narrow", endpoint="mme", model="iris-tree", limits={"max_concurrency": 2})
    router = await start_router(config)
    assert (await router.invoke("narrow"))[0] == 200  # warm both instances' model first
    assert (await router.invoke("narrow"))[0] == 200
    with paused(fresh_mlservers):
        held = [asyncio.create_task(router.invoke("narrow")) for _ in range(2)]
        await asyncio.sleep(0.3)
        status, headers, body = await router.invoke("narrow")
        error_of(status, headers, body, 429, "rate_limited")
        assert headers["Retry-After"] == "1"
    assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
    assert (await router.invoke("narrow"))[0] == 200  # slots are given back


async def test_502_when_the_model_cannot_be_loaded(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    message = error_of(*await router.invoke("ghost"), 502, "upstream_error")
    assert "no-such-model" in message


async def test_502_when_no_instance_answers(tmp_path: Path, start_router: RouterFactory) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {"mme": {"kind": "v2", "instances": ["http://127.0.0.1:9", "http://127.0.0.1:7"]}}
    )
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    router = await start_router(cfg)
    error_of(*await router.invoke("globex"), 502, "upstream_error")


async def test_504_when_the_endpoint_does_not_answer_in_time(
    config: ConfigDir, start_router: RouterFactory, fresh_mlservers: list[Any]
) -> None:
    config.tenant("hasty", endpoint="mme", model="iris-tree", limits={"timeout_ms": 300})
    router = await start_router(config)
    with paused(fresh_mlservers):
        status, headers, body = await router.invoke("hasty")
    error_of(status, headers, body, 504, "upstream_timeout")
    assert headers["X-Model-Id"] == "iris-tree"


async def test_503_not_ready_until_the_preloader_says_warm(
    config: ConfigDir, start_router: RouterFactory, redis_url: str
) -> None:
    import redis.asyncio as aioredis

    router = await start_router(config, wait_for_warm=True)
    async with router.session.get(f"{router.url}/readyz") as resp:
        error_of(resp.status, resp.headers, await resp.read(), 503, "not_ready")
        assert "mme" in (await resp.json())["error"]["message"]
    client = aioredis.Redis.from_url(redis_url)
    await client.set(warm_flag_key("mme"), "1")
    async with router.session.get(f"{router.url}/readyz") as resp:
        assert resp.status == 200
    # Latched: a later scale-out (flag down while a new instance warms) keeps the router ready.
    await client.delete(warm_flag_key("mme"))
    await client.aclose()
    async with router.session.get(f"{router.url}/readyz") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nowhere", 404, "not_found"),
    ("GET", "/v1/tenants/globex/invocations", 405, "method_not_allowed"),
])  # fmt: skip
async def test_other_http_errors_are_json_too(
    config: ConfigDir, start_router: RouterFactory, method: str, path: str, status: int, code: str
) -> None:
    router = await start_router(config)
    async with router.session.request(method, f"{router.url}{path}") as resp:
        error_of(resp.status, resp.headers, await resp.read(), status, code)


async def test_client_gone_mid_body_loses_nothing(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    """A caller that disconnects mid-body gets no answer, and the router keeps serving others."""
    router: RunningRouter = await start_router(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(router.url.rsplit(":", 1)[1]))
    writer.write(
        b"POST /v1/tenants/globex/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        b"Authorization: Bearer globex-key\r\n\r\n" + b"z" * 10
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    del reader
    assert (await router.invoke("globex", key="globex-key"))[0] == 200
