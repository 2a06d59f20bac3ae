"""Bounded load against the router and what each answer was, judged from outside.

Every loop is bounded in count and in time. An answer is judged on what a caller sees: the status,
whether the body is JSON (every answer of the router must be), which model answered (a model of
another tenant is a cross-tenant call), and how long it took.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

IRIS_BODY = orjson.dumps(
    {
        "inputs": [
            {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
        ]
    }
)


@dataclass(frozen=True, slots=True)
class Call:
    """One kind of request: a tenant, its key, a unit, and the models that tenant may get."""

    tenant: str
    key: str | None
    models: frozenset[str]
    unit: str | None = None
    body: bytes = IRIS_BODY
    expected: frozenset[int] = frozenset({200})  # statuses that keep the promise for this call


@dataclass(frozen=True, slots=True)
class Outcome:
    call: Call
    status: int | None  # None: no HTTP answer at all
    json: bool
    model: str | None
    seconds: float
    error: str = ""  # the transport error when there was no answer
    refused: bool = False  # connection refused before anything was sent (a stopped router)

    @property
    def lost(self) -> bool:
        return self.status is None and not self.refused

    @property
    def cross_tenant(self) -> bool:
        return self.status == 200 and self.model not in self.call.models

    @property
    def unexpected(self) -> bool:
        return self.status is not None and self.status not in self.call.expected


@dataclass(slots=True)
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def extend(self, more: Iterable[Outcome]) -> None:
        self.outcomes.extend(more)

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if o.status != 200 and not o.refused)

    @property
    def broken(self) -> int:
        """Answers the promise does not allow for their call, plus lost requests."""
        return sum(1 for o in self.outcomes if o.unexpected or o.lost)

    @property
    def server_errors(self) -> int:
        return sum(1 for o in self.outcomes if o.status == 500)

    @property
    def plain(self) -> int:
        return sum(1 for o in self.outcomes if o.status is not None and not o.json)

    @property
    def lost(self) -> int:
        return sum(1 for o in self.outcomes if o.lost)

    @property
    def cross_tenant(self) -> int:
        return sum(1 for o in self.outcomes if o.cross_tenant)

    def latencies(self, tenant: str | None = None) -> list[float]:
        return sorted(
            o.seconds
            for o in self.outcomes
            if o.status == 200 and (tenant is None or o.call.tenant == tenant)
        )

    def examples(self, limit: int = 3) -> list[str]:
        """A few broken outcomes, to say what went wrong."""
        bad = [o for o in self.outcomes if o.unexpected or o.lost or o.cross_tenant or
               (o.status is not None and not o.json)]  # fmt: skip
        return [
            f"{o.call.tenant}: {o.status if o.status is not None else o.error} "
            f"json={o.json} model={o.model}"
            for o in bad[:limit]
        ]


def percentile(ordered: Sequence[float], pct: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


async def send(session: aiohttp.ClientSession, router: str, call: Call) -> Outcome:
    headers = {"Content-Type": "application/json"}
    if call.key is not None:
        headers["Authorization"] = f"Bearer {call.key}"
    if call.unit is not None:
        headers["X-Unit-Id"] = call.unit
    started = time.monotonic()
    url = f"{router}/v1/tenants/{call.tenant}/invocations"
    try:
        async with session.post(url, data=call.body, headers=headers) as resp:
            body = await resp.read()
            seconds = time.monotonic() - started
            is_json = resp.content_type == "application/json"
            if is_json:
                try:
                    orjson.loads(body)
                except orjson.JSONDecodeError:
                    is_json = False
            return Outcome(call, resp.status, is_json, resp.headers.get("X-Model-Id"), seconds)
    except aiohttp.ClientConnectorError as exc:
        return Outcome(call, None, False, None, time.monotonic() - started, repr(exc), True)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(call, None, False, None, time.monotonic() - started, repr(exc))


async def drive(
    router: str,
    calls: Sequence[Call],
    *,
    count: int,
    max_s: float,
    concurrency: int = 4,
    timeout_s: float = 30.0,
    force_close: bool = False,
) -> list[Outcome]:
    """Send ``count`` requests (cycling through ``calls``) with ``concurrency`` workers, stopping
    early after ``max_s``; every request has a client timeout. ``force_close``: a connection per
    request (no keep-alive race with a server that is closing its idle connections)."""
    plan = itertools.islice(itertools.cycle(calls), count)
    deadline = time.monotonic() + max_s
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=force_close)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            for call in plan:
                if time.monotonic() > deadline:
                    return
                outcomes.append(await send(session, router, call))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes
