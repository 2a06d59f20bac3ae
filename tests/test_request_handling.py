"""What the data plane does with requests a careful client would never send (SPEC "Data plane").

Headers with invalid bytes, oversized headers, bodies that trickle or stop, callers that leave, and
``curl -d`` without a JSON content type: each gets a JSON answer (or, when nobody is left to read
one, a 499 in the metrics), never a 500 or plain text.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from router.logs import ACCESS_LOGGER, JsonFormatter
from tests.router_fixtures import (
    IRIS_SETOSA,
    ConfigDir,
    RouterFactory,
    RunningRouter,
    error_parts,
    eventually,
    load_patiently,
    v2_body,
)

INVOKE = "/v1/tenants/globex/invocations"


@pytest.fixture
def config(mme_config: ConfigDir, fresh_mlservers: Any) -> ConfigDir:
    # Models loaded up front and generous timeouts: these tests are about the router, and a loaded
    # 2-core machine can take seconds for a first model load.
    for instance in fresh_mlservers:
        for model in ("iris-tree", "iris-lr"):
            load_patiently(instance, model)
    mme_config.endpoints(
        {"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers], "timeout_ms": 10000}}
    )
    mme_config.tenant("globex", endpoint="mme", model="iris-tree")
    mme_config.tenant(
        "ab",
        endpoint="mme",
        model="iris-tree",
        experiment={
            "name": "exp",
            "kind": "ab",
            "variants": [
                {"name": "a", "model": "iris-tree", "weight": 50},
                {"name": "b", "model": "iris-lr", "weight": 50},
            ],
        },
    )
    mme_config.tenant("hasty", endpoint="mme", model="iris-tree", limits={"timeout_ms": 500})
    return mme_config


def port_of(router: RunningRouter) -> int:
    return int(router.url.rsplit(":", 1)[1])


async def raw_exchange(router: RunningRouter, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library tidying them up); read one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(router))
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body
    finally:
        writer.close()


def request_bytes(*header_lines: bytes, body: bytes = b"") -> bytes:
    head = [f"POST {INVOKE} HTTP/1.1".encode(), b"Host: router", b"Content-Type: application/json"]
    head += [*header_lines, f"Content-Length: {len(body)}".encode()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def json_error(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str, str]:
    status, headers, body = answer
    assert headers["content-type"].startswith("application/json"), body
    error = orjson.loads(body)["error"]
    assert error["request_id"] == headers["x-request-id"]
    return status, error["code"], error["request_id"]


# -- 1. X-Request-Id and X-Unit-Id ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        (b"abc-123", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"caf\xc3\xa9", False),  # valid UTF-8, not ASCII
        (b"\xff\xfe", False),  # not UTF-8 at all
        (b"a\x01b", False),  # a control character
    ],
)
async def test_request_id_is_echoed_only_when_printable_ascii(
    config: ConfigDir, start_router: RouterFactory, given: bytes, echoed: bool
) -> None:
    router = await start_router(config)
    # On an error answer (unknown tenant): the id goes into the JSON body too.
    raw = request_bytes(b"X-Request-Id: " + given, body=v2_body([IRIS_SETOSA]))
    status, headers, body = await raw_exchange(
        router, raw.replace(b"/tenants/globex/", b"/tenants/nobody/")
    )
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["request_id"] == headers["x-request-id"]
    assert (headers["x-request-id"] == given.decode("latin-1")) is echoed
    assert 1 <= len(headers["x-request-id"]) <= 128
    if status == 400:  # aiohttp's parser refuses control characters itself: JSON all the same
        assert b"\x01" in given
        return
    assert (status, orjson.loads(body)["error"]["code"]) == (404, "tenant_not_found")
    # And on a success.
    status, headers, _ = await raw_exchange(
        router, request_bytes(b"X-Request-Id: " + given, body=v2_body([IRIS_SETOSA]))
    )
    assert status == 200
    assert (headers["x-request-id"] == given.decode("latin-1")) is echoed


@pytest.mark.parametrize(
    "unit",
    [b"\xff\xfeuser", "\u00e9".encode() * 129, b"a\x7fb"],
    ids=["invalid-utf8", "over-256-bytes", "control-character"],
)
async def test_bad_unit_id_is_a_400(
    config: ConfigDir, start_router: RouterFactory, unit: bytes
) -> None:
    router = await start_router(config)
    raw = request_bytes(b"X-Unit-Id: " + unit, body=v2_body([IRIS_SETOSA]))
    answer = await raw_exchange(router, raw.replace(b"/globex/", b"/ab/"))
    status, code, _ = json_error(answer)
    assert (status, code) == (400, "invalid_request")
    assert b"X-Unit-Id" in answer[2]


async def test_unit_id_of_256_bytes_of_utf8_is_sticky(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    unit = "\u00e9" * 128  # 256 bytes
    first = await router.invoke("ab", unit=unit)
    assert first[0] == 200
    for _ in range(5):
        again = await router.invoke("ab", unit=unit)
        assert again[1]["X-Variant"] == first[1]["X-Variant"]


def test_json_log_lines_survive_any_text() -> None:
    """A lone surrogate (what aiohttp makes of an invalid header byte) still gives one JSON line."""
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "tenant=%s", ("bad\udcff",), None)
    record.fields = {"unit": "\udcfe"}
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["msg"].startswith("tenant=bad")
    assert entry["unit"]


# -- 2. oversized and malformed requests, 404/405 ----------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        [b"X-Big: " + b"v" * 9000],
        [f"X-H{i}: {i}".encode() for i in range(101)],
    ],
    ids=["line-over-8KiB", "over-100-headers"],
)
async def test_oversized_headers_get_a_431_json(
    config: ConfigDir, start_router: RouterFactory, extra: list[bytes]
) -> None:
    router = await start_router(config)
    status, code, _ = json_error(await raw_exchange(router, request_bytes(*extra)))
    assert (status, code) == (431, "headers_too_large")
    # The router keeps serving.
    assert (await router.invoke("globex"))[0] == 200


async def test_headers_just_under_the_limits_pass(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    extra = [b"X-Big: " + b"v" * 8000] + [f"X-H{i}: {i}".encode() for i in range(90)]
    status, _, _ = await raw_exchange(router, request_bytes(*extra, body=v2_body([IRIS_SETOSA])))
    assert status == 200


async def test_malformed_request_gets_json(config: ConfigDir, start_router: RouterFactory) -> None:
    router = await start_router(config)
    answer = await raw_exchange(router, b"POST /v1/x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    status, code, _ = json_error(answer)
    assert (status, code) == (400, "invalid_request")


async def test_405_names_the_allowed_method(config: ConfigDir, start_router: RouterFactory) -> None:
    router = await start_router(config)
    async with router.session.get(f"{router.url}{INVOKE}") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


# -- 3. slowloris, 4. callers that leave -------------------------------------------------------------


async def test_trickling_body_gets_408_and_frees_the_slot(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    config.tenant(
        "slow", endpoint="mme", model="iris-tree", limits={"timeout_ms": 500, "max_concurrency": 1}
    )
    router = await start_router(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(router))
    writer.write(
        b"POST /v1/tenants/slow/invocations HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n"
        b"Content-Type: application/json\r\n\r\n{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"application/json" in head
    # Its one concurrency slot is free again.
    assert (await router.invoke("slow"))[0] == 200
    assert router.metric("router_requests_total", tenant="slow", code="408") == 1


async def test_caller_leaving_mid_body_is_a_499_without_traceback(
    config: ConfigDir, start_router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    router = await start_router(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(router))
    writer.write(
        b"POST /v1/tenants/globex/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        b"Content-Type: application/json\r\n\r\n" + b"z" * 10
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    del reader

    async def counted() -> bool:
        return router.metric("router_requests_total", code="499") == 1

    await eventually(counted)
    assert router.metric("router_requests_total", code="500") == 0
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a caller that left"
    assert (await router.invoke("globex"))[0] == 200


async def test_caller_leaving_while_upstream_works_is_a_499(
    config: ConfigDir, start_router: RouterFactory, fresh_mlservers: Any
) -> None:
    router = await start_router(config)
    assert (await router.invoke("globex"))[0] == 200
    for instance in fresh_mlservers:
        instance.pause()
    try:
        call = asyncio.create_task(router.invoke("globex"))
        await asyncio.sleep(0.3)
        call.cancel()  # the client gives up: its connection closes
        await asyncio.sleep(0.1)
    finally:
        for instance in fresh_mlservers:
            instance.resume()

    async def counted() -> bool:
        return router.metric("router_requests_total", code="499") == 1

    await eventually(counted, within_s=10)
    assert router.metric("router_requests_total", tenant="globex", code="200") == 1


# -- 9. curl -d: form-encoded or missing Content-Type on a v2 endpoint -----------------------------


@pytest.mark.parametrize("content_type", [b"application/x-www-form-urlencoded", None])
async def test_json_body_without_json_type_is_taken_as_json(
    config: ConfigDir, start_router: RouterFactory, content_type: bytes | None
) -> None:
    router = await start_router(config)
    body = v2_body([IRIS_SETOSA])
    raw = request_bytes(body=body).replace(b"Content-Type: application/json\r\n", b"")
    if content_type is not None:
        raw = raw.replace(
            b"Host: router\r\n", b"Host: router\r\nContent-Type: " + content_type + b"\r\n"
        )
    status, _, answer = await raw_exchange(router, raw)
    assert status == 200, answer
    assert orjson.loads(answer)["outputs"]


async def test_form_body_that_is_not_json_gets_a_hint(
    config: ConfigDir, start_router: RouterFactory
) -> None:
    router = await start_router(config)
    answer = await router.invoke(
        "globex", b"inputs=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    status, code, message = error_parts(answer)
    assert (status, code) == (400, "invalid_request")
    assert "did you mean Content-Type: application/json?" in message


# -- 6. --access-log --------------------------------------------------------------------------------


async def test_access_log_is_one_line_per_request_when_asked(
    config: ConfigDir, start_router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    quiet = await start_router(config)
    await quiet.invoke("globex")
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]
    router = await start_router(config, access_log=True)
    await router.invoke("globex", headers={"X-Request-Id": "trace-me"})
    await router.invoke("nobody")
    lines = [
        orjson.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == ACCESS_LOGGER
    ]
    assert [(line["tenant"], line["status"]) for line in lines] == [
        ("globex", 200),
        ("_unknown", 404),
    ]
    assert lines[0]["request_id"] == "trace-me"
    assert lines[0]["model"] == "iris-tree"
    assert lines[0]["instance"].startswith("http://127.0.0.1:")
