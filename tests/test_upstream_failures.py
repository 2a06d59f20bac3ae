"""Upstream failures (SPEC "Data plane", robustness rules): retried once when nothing was answered,
bounded by a retry budget, failing instances ejected, and each failure logged once with its trace."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from router.backends.ejection import Ejector
from router.backends.retry_budget import RetryBudget
from router.backends.v2 import InstancePicker, V2Instance
from router.upstream_log import Failure, FailureLog
from tests.router_fixtures import (
    ConfigDir,
    RouterFactory,
    error_parts,
    load_patiently,
    v2_body,
)
from tests.support.auth_gateway import AuthGateway

UPSTREAM_LOGGER = "warmroute.upstream"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(mme_config: ConfigDir, fresh_mlservers: Any) -> ConfigDir:
    for instance in fresh_mlservers:
        load_patiently(instance, "iris-tree")
    mme_config.endpoints(
        {"mme": {"kind": "v2", "instances": [m.url for m in fresh_mlservers], "timeout_ms": 10000}}
    )
    mme_config.tenant("globex", endpoint="mme", model="iris-tree", limits={"timeout_ms": 20000})
    return mme_config


def upstream_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == UPSTREAM_LOGGER]


# -- retry budget, ejection and the failure log on their own ------------------------------------


def test_retry_budget_is_a_fifth_of_recent_requests() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, window_s=10, min_retries=3, clock=clock)
    for _ in range(100):
        budget.record_request()
    spent = sum(budget.try_spend() for _ in range(50))
    assert spent == 23  # 20 % of 100, plus the floor of 3
    clock.now += 5
    assert not budget.try_spend()  # still inside the window
    clock.now += 6  # the first requests and retries left the window
    assert budget.try_spend()


def test_ejection_after_five_failures_never_more_than_half() -> None:
    class Instance:
        def __init__(self) -> None:
            self.failures = 0
            self.ejected_until = 0.0

    fleet = [Instance() for _ in range(4)]
    ejector = Ejector(failures_to_eject=5, eject_for_s=10)
    now = 100.0
    assert [ejector.failed(fleet[0], fleet, now) for _ in range(5)] == [False] * 4 + [True]
    assert fleet[0].ejected_until == 110.0
    ejector.succeeded(fleet[1])
    for instance in fleet[1:]:
        for _ in range(5):
            ejector.failed(instance, fleet, now)
    assert sum(i.ejected_until > now for i in fleet) == 2  # half of four, never more
    # Back after its time; one more failure and it is out again.
    assert ejector.failed(fleet[0], fleet, 111.0)


def test_failure_log_is_rate_limited_per_instance_and_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    failures = FailureLog(interval_s=1.0, clock=clock)

    def failure(instance: str, kind: str = "http_5xx") -> Failure:
        return Failure(kind, "mme", instance, "rid-1", "globex", "iris-tree", 500, b"boom")

    with caplog.at_level(logging.WARNING, logger=UPSTREAM_LOGGER):
        assert failures.warn(failure("a"))
        assert not failures.warn(failure("a"))
        assert not failures.warn(failure("a"))
        assert failures.warn(failure("b"))  # another instance
        assert failures.warn(failure("a", "timeout"))  # another kind
        clock.now += 1.0
        assert failures.warn(failure("a"))
    lines = upstream_warnings(caplog)
    assert len(lines) == 4
    assert "suppressed=2" in lines[-1]


# -- 5. an instance killed mid-traffic ----------------------------------------------------------


async def test_instance_killed_mid_traffic_costs_no_request(
    config: ConfigDir, start_router: RouterFactory, fresh_mlservers: Any
) -> None:
    router = await start_router(config)
    statuses: list[int] = []
    body = v2_body([[5.1, 3.5, 1.4, 0.2]])

    async def worker(until: int) -> None:
        while len(statuses) < until:
            statuses.append((await router.invoke("globex", body))[0])

    await asyncio.gather(*(worker(120) for _ in range(8)))
    # Kill an instance that serves the model: with placement, a model nobody placed is loaded on
    # demand on one instance only, and the other one may never see a request.
    holders = [
        m for m in fresh_mlservers if "iris-tree" in await asyncio.to_thread(m.loaded_models)
    ]
    assert holders
    holders[0].kill()
    killed_at = len(statuses)
    await asyncio.gather(*(worker(killed_at + 200) for _ in range(8)))
    assert [s for s in statuses if s != 200] == []
    retries = router.metric("router_upstream_retries_total", endpoint="mme")
    # How many requests met the dead instance depends on which one the picker had in flight at the
    # kill (none, when it had already moved to the other holder): the promise is no failed request.
    # Ejected after 5 failures in a row: the dead instance is not tried for each request.
    assert retries <= 25, retries


async def test_no_retry_beyond_the_budget(
    tmp_path: Any, start_router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints(
        {"mme": {"kind": "v2", "instances": ["http://127.0.0.1:9", "http://127.0.0.1:7"]}}
    )
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    router = await start_router(cfg)
    started = time.monotonic()
    for _ in range(40):
        status, code, message = error_parts(await router.invoke("globex"))
        assert (status, code) == (502, "upstream_error")
        assert "unreachable" in message
    elapsed = time.monotonic() - started
    # Retries stay within 20 % of 40 requests plus the floor of 10, and none goes to an ejected one.
    assert router.metric("router_upstream_retries_total", endpoint="mme", reason="refused") <= 18
    # One line a second per instance and kind, not one per request.
    unreachable = [line for line in upstream_warnings(caplog) if "kind=unreachable" in line]
    assert 1 <= len(unreachable) <= 2 * (int(elapsed) + 2)


# -- 6./8. the failure WARNING and the 502's message ------------------------------------------------


async def test_model_failure_is_logged_with_its_trace(
    config: ConfigDir, start_router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    router = await start_router(config)
    bad_shape = v2_body([[5.1, 3.5, 1.4]])  # three features for a four-feature model
    with caplog.at_level(logging.WARNING, logger=UPSTREAM_LOGGER):
        answer = await router.invoke("globex", bad_shape, headers={"X-Request-Id": "trace-42"})
    status, code, message = error_parts(answer)
    assert (status, code) == (502, "upstream_error")
    assert "HTTP 500" in message
    [line] = upstream_warnings(caplog)
    for part in ("request_id=trace-42", "tenant=globex", "model=iris-tree", "status=500",
                 "instance=http://127.0.0.1:", "body='Internal Server Error'"):  # fmt: skip
        assert part in line, line


@pytest_asyncio.fixture
async def gateway(fresh_mlservers: Any) -> AsyncIterator[AuthGateway]:
    gate = AuthGateway(fresh_mlservers[0].url, token="mesh-token")
    await gate.start()
    try:
        yield gate
    finally:
        await gate.close()


async def test_502_message_quotes_the_upstream_body(
    tmp_path: Any, start_router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gate = AuthGateway("http://127.0.0.1:9", token=None)  # the workload behind it is down
    await gate.start()
    try:
        cfg = ConfigDir(tmp_path / "cfg")
        cfg.endpoints({"mme": {"kind": "v2", "instances": [gate.url]}})
        cfg.tenant("globex", endpoint="mme", model="iris-tree")
        router = await start_router(cfg)
        status, code, message = error_parts(await router.invoke("globex"))
    finally:
        await gate.close()
    assert (status, code) == (502, "upstream_error")
    assert "HTTP 503: upstream connect error" in message


# -- 7. upstream 401/403 and 404s that are not "model not found" -----------------------------------


@pytest.mark.parametrize(("deny", "text"), [(401, "Jwt is missing"), (403, "RBAC: access denied")])
async def test_upstream_auth_refusal_is_a_502_not_a_400(
    tmp_path: Any,
    start_router: RouterFactory,
    gateway: AuthGateway,
    caplog: pytest.LogCaptureFixture,
    deny: int,
    text: str,
) -> None:
    gateway.deny_status = deny
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [gateway.url]}})
    cfg.tenant("globex", endpoint="mme", model="iris-tree")
    router = await start_router(cfg)
    with caplog.at_level(logging.WARNING, logger=UPSTREAM_LOGGER):
        status, code, message = error_parts(await router.invoke("globex"))
    assert (status, code) == (502, "upstream_error")
    assert f"HTTP {deny}" in message
    assert text in message
    assert any(f"status={deny}" in line for line in upstream_warnings(caplog))
    assert router.metric("router_model_loads_total") == 0


async def test_a_404_that_is_not_model_not_found_loads_nothing(
    tmp_path: Any, start_router: RouterFactory, fresh_mlservers: Any
) -> None:
    # A gateway that routes to the wrong path: MLServer answers its router's 404 {"detail": ...}.
    gate = AuthGateway(fresh_mlservers[0].url, token=None, prefix="/prefix")
    await gate.start()
    try:
        cfg = ConfigDir(tmp_path / "cfg")
        cfg.endpoints({"mme": {"kind": "v2", "instances": [gate.url]}})
        cfg.tenant("globex", endpoint="mme", model="iris-tree")
        router = await start_router(cfg)
        status, code, message = error_parts(await router.invoke("globex"))
    finally:
        await gate.close()
    assert (status, code) == (502, "upstream_error")
    assert "HTTP 404" in message
    assert router.metric("router_model_loads_total") == 0


def test_instance_choice_prefers_live_then_warm_and_rotates() -> None:
    session: Any = None  # never used: choice only reads urls and health
    timeout = aiohttp.ClientTimeout(total=1)
    a, b, c = (V2Instance(f"http://{h}:1", session, timeout=timeout) for h in "abc")
    warm = InstancePicker(lambda model: frozenset({"http://b:1", "http://c:1"}))
    assert {warm.choose("m", [a, b, c], now=0.0) for _ in range(6)} == {b, c}
    c.ejected_until = 10.0
    assert {warm.choose("m", [a, b, c], now=0.0) for _ in range(6)} == {b}
    # A retry avoids the instance that failed, and does not move the rotation on.
    assert warm.choose("m", [a, b, c], now=0.0, avoid=b) is a
    assert InstancePicker().choose("m", [a], now=0.0, avoid=a) is None
