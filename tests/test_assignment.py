"""Sticky buckets against a real Redis: SPEC.md's eight rules, at the assignment engine."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from devstack.redis_server import RedisServer
from router.assignment import Assigner, Assignment, ExperimentPlan, unit_hash
from router.breaker import Breaker
from router.metrics import RouterMetrics
from tenancy.models import Experiment
from tests.support.slow_proxy import SlowProxy

AssignerFactory = Callable[[], Awaitable[Assigner]]


def plan(
    kind: str,
    weights: Mapping[str, float],
    *,
    salt: str = "s1",
    tenant: str = "acme",
    **extra: Any,
) -> ExperimentPlan:
    variants = [{"name": n, "model": f"model-{n}", "weight": w} for n, w in weights.items()]
    experiment = Experiment.model_validate(
        {"name": "exp", "kind": kind, "salt": salt, "variants": variants, **extra}
    )
    return ExperimentPlan(tenant, experiment)


def canary_at(percent: float) -> ExperimentPlan:
    return plan("canary", {"control": 100 - percent, "canary": percent})


def below(share: float, p: ExperimentPlan, units: list[str]) -> set[str]:
    """The units whose hash point lies below ``share``: exactly the canary at that share (rule 3)."""
    e = p.experiment
    return {u for u in units if unit_hash(e.salt, p.tenant_id, e.name, u) < share}


def in_canary(units: list[str], got: list[Assignment]) -> set[str]:
    return {u for u, a in zip(units, got, strict=True) if a.variant == "canary"}


@pytest_asyncio.fixture
async def make_assigner(redis_url: str) -> AsyncIterator[AssignerFactory]:
    """Each call is a new replica: its own client, cache and metrics, on the same Redis."""
    clients: list[aioredis.Redis] = []

    async def make() -> Assigner:
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64)
        client = aioredis.Redis(connection_pool=pool)
        clients.append(client)
        # Generous budget: these tests check the rules, the budget has its own tests.
        return Assigner(client, RouterMetrics(), budget_s=5.0)

    yield make
    for client in clients:
        await client.aclose(close_connection_pool=True)


async def assign_all(assigner: Assigner, p: ExperimentPlan, units: list[str]) -> list[Assignment]:
    results: list[Assignment] = []
    for start in range(0, len(units), 256):
        batch = units[start : start + 256]
        results += await asyncio.gather(*(assigner.assign(p, u) for u in batch))
    return results


def shares(assignments: list[Assignment]) -> dict[str, float]:
    counts = Counter(a.variant for a in assignments)
    return {name: n / len(assignments) for name, n in counts.items()}


async def test_two_replicas_agree_for_10000_units(make_assigner: AssignerFactory) -> None:
    p = plan("ab", {"a": 1, "b": 1, "c": 2})
    one, two = await make_assigner(), await make_assigner()
    units = [f"user-{i}" for i in range(10_000)]
    first = await assign_all(one, p, units)
    second = await assign_all(two, p, units)
    assert [a.variant for a in first] == [a.variant for a in second]
    assert {a.source for a in second} == {"stored"}


@pytest.mark.parametrize(
    ("kind", "weights"),
    [("ab", {"a": 20, "b": 30, "c": 50}), ("canary", {"control": 90, "canary": 10})],
)
async def test_100000_units_split_within_one_point(
    make_assigner: AssignerFactory, kind: str, weights: dict[str, float]
) -> None:
    assigner = await make_assigner()
    got = shares(await assign_all(assigner, plan(kind, weights), [f"u{i}" for i in range(100_000)]))
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(got[name] - weight / total) < 0.01, (name, got)


async def test_ab_weight_change_moves_no_assigned_unit(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    units = [f"u{i}" for i in range(3000)]
    before = await assign_all(assigner, plan("ab", {"a": 50, "b": 50}), units)
    after_plan = plan("ab", {"a": 10, "b": 90})
    after = await assign_all(await make_assigner(), after_plan, units)
    assert [a.variant for a in after] == [a.variant for a in before]
    assert {a.source for a in after} == {"stored"}
    # New units follow the new weights.
    fresh = shares(await assign_all(assigner, after_plan, [f"new{i}" for i in range(20_000)]))
    assert abs(fresh["b"] - 0.9) < 0.01


async def test_canary_ramp_only_moves_control_into_canary(make_assigner: AssignerFactory) -> None:
    units = [f"u{i}" for i in range(10_000)]
    entered: set[str] = set()
    for weight in (5, 20, 50):
        assigner = await make_assigner()  # a fresh replica per step: decisions come from Redis
        got = await assign_all(
            assigner, plan("canary", {"control": 100 - weight, "canary": weight}), units
        )
        now = {u for u, a in zip(units, got, strict=True) if a.variant == "canary"}
        assert entered <= now, "a canary unit went back to control"
        assert abs(len(now) / len(units) - weight / 100) < 0.01
        entered = now


async def test_rollback_sends_everyone_to_control_at_once(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    units = [f"u{i}" for i in range(2000)]
    await assign_all(assigner, canary_at(50), units)
    rolled = await assign_all(assigner, canary_at(0), units)
    assert {(a.variant, a.source) for a in rolled} == {("control", "hash")}


async def test_reopening_after_a_rollback_puts_exactly_the_units_below_the_share_in_canary(
    make_assigner: AssignerFactory,
) -> None:
    units = [f"u{i}" for i in range(4000)]
    await assign_all(await make_assigner(), canary_at(50), units)  # stored during the earlier ramp
    await assign_all(await make_assigner(), canary_at(0), units)  # rollback
    for replica in (await make_assigner(), await make_assigner()):  # Redis, then the cache
        reopened = await assign_all(replica, canary_at(5), units)
        assert in_canary(units, reopened) == below(0.05, canary_at(5), units)
        reopened = await assign_all(replica, canary_at(5), units)
        assert in_canary(units, reopened) == below(0.05, canary_at(5), units)


async def test_lowering_the_canary_moves_the_last_units_back_first(
    make_assigner: AssignerFactory,
) -> None:
    units = [f"u{i}" for i in range(4000)]
    await assign_all(await make_assigner(), canary_at(50), units)
    lowered = await assign_all(await make_assigner(), canary_at(20), units)
    kept, was = below(0.2, canary_at(20), units), below(0.5, canary_at(50), units)
    assert in_canary(units, lowered) == kept
    # Units whose stored value still matches keep source "stored"; those moved back are "hash".
    source = {u: a.source for u, a in zip(units, lowered, strict=True)}
    assert {source[u] for u in kept} == {"stored"}
    assert {source[u] for u in was - kept} == {"hash"}


async def test_an_effective_canary_share_overrides_the_file_weight(
    make_assigner: AssignerFactory,
) -> None:
    units = [f"u{i}" for i in range(4000)]
    assigner = await make_assigner()
    file_plan = canary_at(5)
    await assign_all(assigner, file_plan, units)  # cached at 5 %
    effective = file_plan.with_canary_share(0.5)
    got = await assign_all(assigner, effective, units)
    assert in_canary(units, got) == below(0.5, file_plan, units)
    assert not effective.rolled_back
    assert file_plan.with_canary_share(0).rolled_back
    with pytest.raises(ValueError, match="canary"):
        plan("ab", {"a": 1, "b": 1}).with_canary_share(0.5)


async def test_tenants_with_identical_experiments_never_share_a_decision(
    make_assigner: AssignerFactory,
) -> None:
    assigner = await make_assigner()
    units = [f"u{i}" for i in range(500)]
    acme, beta = plan("ab", {"a": 1, "b": 1}), plan("ab", {"a": 1, "b": 1}, tenant="beta")
    await assign_all(assigner, acme, units)
    got = await assign_all(assigner, beta, units)
    assert {a.source for a in got} == {"hash"}  # beta's first decisions, not acme's cached ones
    assert [a.variant for a in got] == [beta.by_hash(u).name for u in units]
    assert await assigner.redis.dbsize() == 2 * len(units)  # beta stored its own


async def test_each_use_renews_the_stored_assignment(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    redis = assigner.redis
    p = plan("ab", {"a": 1, "b": 1}, ttl_s=3600)
    await assigner.assign(p, "hot")
    key = p.key_prefix + "hot"
    assert 3590 <= await redis.ttl(key) <= 3600
    await redis.expire(key, 100)  # as if last used long ago
    assert (await assigner.assign(p, "hot")).source == "stored"  # from the cache
    assert await assigner.flush_renewals() == 1
    assert await redis.ttl(key) > 3500
    await redis.expire(key, 100)
    other = await make_assigner()  # another replica: through Redis, no cache
    assert (await other.assign(p, "hot")).source == "stored"
    assert await redis.ttl(key) > 3500
    await redis.expire(key, 100)
    await other.peek(p, "hot")  # an admin look-up is not a use
    assert await redis.ttl(key) <= 100


async def test_an_empty_unit_counts_as_absent(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    got = [await assigner.assign(plan("ab", {"a": 1, "b": 1}), "") for _ in range(200)]
    assert {a.source for a in got} == {"weighted"}
    assert len({a.variant for a in got}) == 2
    assert await assigner.redis.dbsize() == 0


async def test_overrides_win_over_everything(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    base = {"control": 100, "canary": 0}
    p = plan("canary", base, overrides={"canary": ["qa-1"]})
    assert await assigner.assign(p, "qa-1") == Assignment("canary", "model-canary", "override")
    ab = plan("ab", {"a": 1, "b": 0.0001}, overrides={"b": ["qa-2"]})
    await assigner.assign(plan("ab", {"a": 1, "b": 0.0001}), "qa-2")  # stored as a first
    assert (await assigner.assign(ab, "qa-2")).variant == "b"


async def test_salt_change_starts_afresh(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    units = [f"u{i}" for i in range(4000)]
    old = await assign_all(assigner, plan("ab", {"a": 1, "b": 1}, salt="2026-10"), units)
    new_plan = plan("ab", {"a": 1, "b": 1}, salt="2026-11")
    new = await assign_all(assigner, new_plan, units)
    assert {a.source for a in new} == {"hash"}  # nothing stored under the new salt yet
    assert [a.variant for a in new] == [new_plan.by_hash(u).name for u in units]
    moved = sum(o.variant != n.variant for o, n in zip(old, new, strict=True)) / len(units)
    assert 0.4 < moved < 0.6  # an independent draw, not the old buckets


async def test_closing_an_ab_variant_re_decides_its_units(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    units = [f"u{i}" for i in range(3000)]
    before = await assign_all(assigner, plan("ab", {"a": 1, "b": 1, "c": 1}), units)
    closed = plan("ab", {"a": 1, "b": 0, "c": 1})
    after = await assign_all(await make_assigner(), closed, units)
    for unit, old, new in zip(units, before, after, strict=True):
        if old.variant == "b":
            assert (new.variant, new.source) == (closed.by_hash(unit).name, "hash")
            assert new.variant in {"a", "c"}
        else:
            assert (new.variant, new.source) == (old.variant, "stored")


async def test_assignments_survive_a_restart(make_assigner: AssignerFactory) -> None:
    units = [f"u{i}" for i in range(1000)]
    first = await assign_all(await make_assigner(), plan("ab", {"a": 1, "b": 1}), units)
    restarted = await make_assigner()  # empty cache: only Redis remembers
    again = await assign_all(restarted, plan("ab", {"a": 9, "b": 1}), units)
    assert [a.variant for a in again] == [a.variant for a in first]


async def test_no_unit_is_weighted_and_not_stored(
    make_assigner: AssignerFactory, redis_url: str
) -> None:
    assigner = await make_assigner()
    got = [await assigner.assign(plan("ab", {"a": 3, "b": 1}), None) for _ in range(4000)]
    assert {a.source for a in got} == {"weighted"}
    assert abs(shares(got)["a"] - 0.75) < 0.03
    assert await assigner.redis.dbsize() == 0


async def test_peek_stores_and_counts_nothing(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    p = plan("ab", {"a": 1, "b": 1})
    peeked = await assigner.peek(p, "u1")
    assert peeked.source == "hash"
    assert await assigner.redis.dbsize() == 0
    assert assigner.metrics.assignments.labels("hash")._value.get() == 0
    stored = await assigner.assign(p, "u1")
    assert (await assigner.peek(p, "u1")).variant == stored.variant
    assert (await assigner.peek(p, "u1")).source == "stored"


async def test_hot_units_are_served_from_the_cache(make_assigner: AssignerFactory) -> None:
    assigner = await make_assigner()
    p = plan("ab", {"a": 1, "b": 1})
    first = await assigner.assign(p, "hot")
    await assigner.redis.flushdb()  # behind its back: only the cache knows now
    again = await assigner.assign(p, "hot")
    assert (again.variant, again.source) == (first.variant, "stored")
    assert await assigner.redis.dbsize() == 0  # no round trip was made
    # A config change invalidates: the next decision goes back to Redis.
    changed = plan("ab", {"a": 1, "b": 2})
    await assigner.assign(changed, "hot")
    assert await assigner.redis.dbsize() == 1


async def test_open_breaker_bypasses_the_cache_so_replicas_agree(own_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(f"{own_redis.url}/0")
    assigner = Assigner(client, RouterMetrics(), budget_s=0.05)
    p = plan("ab", {"a": 1, "b": 1})
    unit = next(u for u in (f"u{i}" for i in range(100)) if p.by_hash(u).name == "b")
    await client.set(p.key_prefix + unit, "a")  # stored earlier, under other weights
    assert await assigner.assign(p, unit) == Assignment("a", "model-a", "stored")  # now cached
    own_redis.kill()
    for i in range(3):  # other units find Redis gone; the breaker opens
        assert (await assigner.assign(p, f"other{i}")).source == "hash"
    assert assigner.breaker.is_open
    assert await assigner.assign(p, unit) == Assignment("b", "model-b", "hash")
    assert assigner.metrics.redis_errors._value.get() == 3
    await client.aclose()


@pytest_asyncio.fixture
async def slow_redis(own_redis: RedisServer) -> AsyncIterator[SlowProxy]:
    """``own_redis`` behind a proxy that delivers every answer 40 ms late (past a 20 ms budget)."""
    proxy = SlowProxy(own_redis.host, own_redis.port, delay_s=0.040)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_late_answers_never_close_the_breaker(slow_redis: SlowProxy) -> None:
    client = aioredis.Redis.from_url(f"{slow_redis.url}/0")
    assigner = Assigner(client, RouterMetrics(), budget_s=0.020)
    p = plan("ab", {"a": 1, "b": 1})
    for i in range(40):  # steady traffic: every late answer arrives before the next request
        assert (await assigner.assign(p, f"u{i}")).source == "hash"
        await asyncio.sleep(0.03)
    # 3 to open it, then one probe per cooldown (1 s); not one wait per request.
    assert assigner.metrics.redis_errors._value.get() <= 6
    assert assigner.breaker.is_open
    await assigner.aclose()
    await client.aclose()


async def test_a_cancelled_probe_does_not_keep_the_breaker_open(own_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(f"{own_redis.url}/0")
    assigner = Assigner(client, RouterMetrics(), budget_s=0.05, breaker=Breaker(cooldown_s=0.1))
    p = plan("ab", {"a": 1, "b": 1})
    own_redis.pause()
    try:
        for i in range(3):
            await assigner.assign(p, f"u{i}")
        assert assigner.breaker.is_open
        await asyncio.sleep(0.15)
        probe = asyncio.create_task(assigner.assign(p, "probe"))
        await asyncio.sleep(0.01)  # the probe is waiting on the paused Redis...
        probe.cancel()  # ...and its caller goes away
        with pytest.raises(asyncio.CancelledError):
            await probe
    finally:
        own_redis.resume()
    await client.set(p.key_prefix + "back", "a")

    async def stored_again() -> bool:
        await asyncio.sleep(0.05)
        return (await assigner.assign(p, "back")).source == "stored"

    for _ in range(40):
        if await stored_again():
            break
    else:
        pytest.fail("the breaker never closed after a cancelled probe")
    await assigner.aclose()
    await client.aclose()
