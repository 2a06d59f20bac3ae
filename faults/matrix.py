"""The fault matrix: each fault runs beside bounded load on the real stack and is judged from outside.

A row per fault: requests sent, failed (any answer but 200, or none), 500s, lost (no answer where
one was due), plain (an answer that is not JSON), added p50/p99 of the 200s against the no-fault
baseline, cross-tenant calls (a 200 from a model the tenant does not use, or for another tenant's
key). A row breaks its promise when any answer is outside what SPEC allows for its call, or any
500, plain-text answer, lost request or cross-tenant call shows up. Timings never decide pass/fail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from devstack.ports import free_port, wait_http
from faults.fuzz import fuzz_router
from faults.load import Call, Outcome, Tally, drive, percentile
from faults.stack import Stack, write


@dataclass(frozen=True, slots=True)
class Scale:
    requests: int  # per load phase
    max_s: float  # bound on each load phase
    fuzz_examples: int
    concurrency: int = 4


SMALL = Scale(requests=40, max_s=20.0, fuzz_examples=40)
FULL = Scale(requests=400, max_s=30.0, fuzz_examples=300, concurrency=8)


@dataclass(slots=True)
class Row:
    fault: str
    tally: Tally
    notes: list[str] = field(default_factory=list)  # promises checked besides the answers
    p50_ms: float = float("nan")  # added against the baseline
    p99_ms: float = float("nan")

    @property
    def ok(self) -> bool:
        t = self.tally
        return not (t.broken or t.server_errors or t.plain or t.cross_tenant or self.notes)

    def problems(self) -> list[str]:
        return [*self.notes, *self.tally.examples()]


Fault = Callable[[Stack, Scale], Awaitable[Row]]


async def _during(load: Awaitable[list[Outcome]], action: Awaitable[object]) -> list[Outcome]:
    """Run ``action`` while ``load`` runs; the load's outcomes."""
    task = asyncio.ensure_future(load)
    await action
    return await task


async def _after(seconds: float, action: Callable[[], object]) -> None:
    await asyncio.sleep(seconds)
    result = action()
    if asyncio.iscoroutine(result):
        await result


def _load(
    stack: Stack, scale: Scale, calls: Sequence[Call], **kw: object
) -> Awaitable[list[Outcome]]:
    return drive(
        stack.router.url,
        calls,
        count=int(kw.get("count", scale.requests)),  # type: ignore[call-overload]
        max_s=scale.max_s,
        concurrency=int(kw.get("concurrency", scale.concurrency)),  # type: ignore[call-overload]
    )


def _mixed(stack: Stack) -> list[Call]:
    return [*stack.alpha(), stack.beta()]


# -- the faults ------------------------------------------------------------------------------------


async def baseline(stack: Stack, scale: Scale) -> Row:
    tally = Tally()
    tally.extend(await _load(stack, scale, _mixed(stack)))
    return Row("baseline (no fault)", tally)


async def redis_sigkill(stack: Stack, scale: Scale) -> Row:
    tally = Tally()
    try:
        tally.extend(
            await _during(_load(stack, scale, _mixed(stack)), _after(0.3, stack.redis.kill))
        )
    finally:
        await asyncio.to_thread(stack.redis.restart)
    return Row("Redis SIGKILL mid-traffic", tally)


async def redis_sigstop(stack: Stack, scale: Scale) -> Row:
    tally = Tally()
    try:
        tally.extend(
            await _during(_load(stack, scale, _mixed(stack)), _after(0.3, stack.redis.pause))
        )
    finally:
        stack.redis.resume()
    return Row("Redis SIGSTOP mid-traffic", tally)


async def redis_slow(stack: Stack, scale: Scale) -> Row:
    """Every Redis answer 60 ms late, three times the router's 20 ms budget."""
    tally = Tally()
    stack.redis_proxy.delay_s = 0.06
    try:
        tally.extend(await _load(stack, scale, _mixed(stack)))
    finally:
        stack.redis_proxy.delay_s = 0.0
    return Row("Redis slower than the budget (+60 ms)", tally)


async def mlserver_sigkill(stack: Stack, scale: Scale) -> Row:
    tally = Tally()
    victim = stack.mlservers[1]
    tally.extend(await _during(_load(stack, scale, _mixed(stack)), _after(0.3, victim.kill)))
    return Row("MLServer SIGKILL mid-traffic", tally)


async def mlserver_restarted_empty(stack: Stack, scale: Scale) -> Row:
    """The killed instance comes back empty while traffic flows: lazy loads, no failure."""
    tally = Tally()
    victim = stack.mlservers[1]
    tally.extend(
        await _during(
            _load(stack, scale, _mixed(stack)),
            _after(0.1, lambda: asyncio.to_thread(victim.restart)),
        )
    )
    tally.extend(await _load(stack, scale, _mixed(stack)))
    return Row("MLServer restarted empty mid-traffic", tally)


def _bad(mode: str, title: str) -> Fault:
    async def run(stack: Stack, scale: Scale) -> Row:
        tally = Tally()
        count = scale.requests // 2 if mode != "slow" else max(8, scale.requests // 8)
        calls = [stack.bad_call(mode), *stack.alpha(4)]
        tally.extend(await _load(stack, scale, calls, count=count))
        return Row(title, tally)

    run.__name__ = f"mme_{mode}"
    return run


async def config_at_reload(stack: Stack, scale: Scale) -> Row:
    """alpha's file turns invalid YAML, then schema-invalid (its last good version keeps serving);
    beta's file is deleted (beta: 404 tenant_not_found, JSON) and put back."""
    tally = Tally()
    notes: list[str] = []
    alpha_path, beta_path = stack.tenant_path("alpha"), stack.tenant_path("beta")
    alpha_good, beta_good = alpha_path.read_text(), beta_path.read_text()
    calls = stack.alpha(10)

    async def edits() -> None:
        await asyncio.sleep(0.2)
        alpha_path.write_text("endpoint: [mme\n  model: : :\n")
        answer = await stack.reload()
        if not answer.get("issues"):
            notes.append(f"invalid YAML not reported by the reload: {answer}")
        await asyncio.sleep(0.3)
        write(alpha_path, {"endpoint": "mme", "model": "iris-lr", "no_such_field": 1})
        answer = await stack.reload()
        if not answer.get("issues"):
            notes.append(f"schema-invalid file not reported by the reload: {answer}")
        await asyncio.sleep(0.3)

    try:
        tally.extend(await _during(_load(stack, scale, calls), edits()))
    finally:
        alpha_path.write_text(alpha_good)
        await stack.reload()
    beta_path.unlink()
    try:
        await stack.reload()
        gone = Call("beta", stack.keys["beta"], frozenset(), expected=frozenset({404}))
        tally.extend(await _load(stack, scale, [gone, *stack.alpha(4)], count=20))
    finally:
        beta_path.write_text(beta_good)
        await stack.reload()
    tally.extend(await _load(stack, scale, [stack.beta()], count=10))
    return Row("invalid, schema-invalid, deleted config at reload", tally, notes)


async def sigterm_under_load(stack: Stack, scale: Scale) -> Row:
    """A second router process gets SIGTERM while requests are in flight: each request it accepted
    is answered; afterwards connections are refused (not lost); it exits 0. A connection per
    request: a request racing the close of an idle keep-alive connection never reached the router
    (a client-side race any HTTP/1.1 server has), which is not what this row measures."""
    tally = Tally()
    notes: list[str] = []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (stack.workdir / "router-sigterm.log").open("wb")
    env = {**os.environ, "WARMROUTE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(stack.workdir.cwd())}
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once; the loop waits on nothing here)
        stack.router_argv(port, f"{stack.redis.url}/0"), stdout=log, stderr=subprocess.STDOUT,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        await asyncio.to_thread(wait_http, f"{url}/readyz", 60.0)
        load = drive(url, _mixed(stack), count=scale.requests, max_s=scale.max_s,
                     concurrency=scale.concurrency * 2, force_close=True)  # fmt: skip
        outcomes = await _during(load, _after(0.4, lambda: proc.send_signal(signal.SIGTERM)))
        # A connection still in the listen backlog when the listener closes is reset by the
        # kernel before the router ever read it (the client sees a reset, or cannot write its
        # body): never received, so not lost (safe to retry).
        tally.extend(replace(o, refused=True) if _never_received(o) else o for o in outcomes)
        code = await asyncio.to_thread(proc.wait, 30)
        if code != 0:
            notes.append(f"router exited {code} after SIGTERM")
        if not any(o.status == 200 for o in tally.outcomes):
            notes.append("no request was served before SIGTERM: nothing was tested")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return Row("SIGTERM under load", tally, notes)


def _never_received(outcome: Outcome) -> bool:
    return outcome.status is None and (
        "Connection reset by peer" in outcome.error or "Can not write request body" in outcome.error
    )


async def flood(stack: Stack, scale: Scale) -> Row:
    """noisy sends with 10x the workers of quiet alpha, past its rps: 429s for noisy only."""
    tally = Tally()
    noisy = drive(stack.router.url, [stack.noisy()], count=scale.requests * 10,
                  max_s=scale.max_s / 2, concurrency=10)  # fmt: skip
    quiet = drive(stack.router.url, stack.alpha(), count=scale.requests, max_s=scale.max_s / 2,
                  concurrency=1)  # fmt: skip
    for outcomes in await asyncio.gather(noisy, quiet):
        tally.extend(outcomes)
    notes = []
    if not any(o.status == 429 for o in tally.outcomes if o.call.tenant == "noisy"):
        notes.append("the flood never hit noisy's rate limit: nothing was tested")
    return Row("10x flood on one tenant, a quiet one beside", tally, notes)


async def cross_tenant_keys(stack: Stack, scale: Scale) -> Row:
    """Each tenant's key on every other tenant: 403, never served."""
    tally = Tally()
    calls = [
        Call(target, key, frozenset(), unit="x", expected=frozenset({403}))
        for owner, key in stack.keys.items()
        for target in stack.keys
        if target != owner
    ]
    tally.extend(await _load(stack, scale, calls, count=max(len(calls) * 3, scale.requests // 4)))
    return Row("cross-tenant keys (A's key on B)", tally)


async def fuzzed(stack: Stack, scale: Scale) -> Row:
    tally = Tally()
    notes = await asyncio.to_thread(
        fuzz_router, stack.router.url, stack.keys["beta"], scale.fuzz_examples
    )
    # The router must still serve afterwards.
    tally.extend(await _load(stack, scale, _mixed(stack), count=20))
    return Row(f"fuzzed headers and bodies ({scale.fuzz_examples} examples)", tally, notes)


FAULTS: list[Fault] = [
    redis_sigkill,
    redis_sigstop,
    redis_slow,
    mlserver_sigkill,
    mlserver_restarted_empty,
    _bad("slow", "MME slow past the timeout"),
    _bad("html500", "MME answers HTML 500"),
    _bad("truncated", "MME truncates its body"),
    _bad("reset", "MME closes mid-response"),
    config_at_reload,
    flood,
    fuzzed,
    cross_tenant_keys,
    sigterm_under_load,
]


async def run_matrix(
    stack: Stack, scale: Scale, *, log: Callable[[str], None] = print
) -> list[Row]:
    """Baseline first (it also loads what the lazy path needs), then every fault."""
    # Warm-up, not counted: as long as the baseline itself, so no first load (on any instance)
    # lands in the baseline's tail and every fault's added p99 reads as a real difference.
    await _load(stack, scale, _mixed(stack))
    base = await baseline(stack, scale)
    rows = [base]
    base_lat = base.tally.latencies("alpha")
    for fault in FAULTS:
        log(f"fault: {getattr(fault, '__name__', fault)} ...")
        row = await fault(stack, scale)
        lat = row.tally.latencies("alpha")
        if lat and base_lat:
            row.p50_ms = (percentile(lat, 50) - percentile(base_lat, 50)) * 1000
            row.p99_ms = (percentile(lat, 99) - percentile(base_lat, 99)) * 1000
        rows.append(row)
        log(f"  {row.fault}: {'ok' if row.ok else 'BROKEN: ' + '; '.join(row.problems())}")
    return rows


def table(rows: Sequence[Row]) -> str:
    head = ("fault", "sent", "failed", "500s", "lost", "plain", "+p50 ms", "+p99 ms", "cross",
            "promise")  # fmt: skip
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|",
    ]
    for r in rows:
        t = r.tally
        cells = [
            r.fault, str(t.sent), str(t.failed), str(t.server_errors), str(t.lost), str(t.plain),
            _ms(r.p50_ms), _ms(r.p99_ms), str(t.cross_tenant), "kept" if r.ok else "BROKEN",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:+.0f}"


def main_exit(rows: Sequence[Row]) -> int:
    broken = [r for r in rows if not r.ok]
    for row in broken:
        print(f"BROKEN {row.fault}: " + "; ".join(row.problems()), file=sys.stderr)
    return 1 if broken else 0
