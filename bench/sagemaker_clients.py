"""The SageMaker path's client cost, in-process, against the benchmark's stub: stock aiobotocore
``invoke_endpoint`` (what the router used before), the router's ``SageMakerBackend.invoke`` (pooled
aiohttp + botocore's SigV4 signer) and a bare aiohttp POST (the v2 path's floor). CPU per call is
this process's CPU time over the calls (the stub runs in its own process); 32 calls in flight."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import uvloop
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from router.backends.base import UpstreamRequest
from router.backends.sagemaker import SageMakerBackend, SageMakerClients

BODY = b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}'
ENDPOINT = "bench-mme"
MODEL = "bench-model"
CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class ClientCost:
    label: str
    calls_per_s: float
    cpu_us_per_call: float


async def _run(label: str, call: Callable[[], Awaitable[None]], calls: int) -> ClientCost:
    for _ in range(100):  # warm-up: connections, caches
        await call()
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return ClientCost(label, calls / wall, cpu / calls * 1e6)


async def _measure(upstream_url: str, calls: int) -> list[ClientCost]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    results: list[ClientCost] = []
    config = AioConfig(max_pool_connections=64, retries={"total_max_attempts": 1})
    async with get_session().create_client(
        "sagemaker-runtime", region_name="us-east-1", endpoint_url=upstream_url, config=config
    ) as client:

        async def stock() -> None:
            answer = await client.invoke_endpoint(
                EndpointName=ENDPOINT, TargetModel=MODEL, Body=BODY, ContentType="application/json"
            )
            await answer["Body"].read()

        results.append(await _run("stock aiobotocore invoke_endpoint", stock, calls))

    clients = SageMakerClients(max_pool_connections=64)
    backend = SageMakerBackend(
        "bench",
        endpoint_name=ENDPOINT,
        region="us-east-1",
        endpoint_url=upstream_url,
        clients=clients,
        attempt_timeout_s=5.0,
    )
    request = UpstreamRequest(MODEL, BODY, "application/json", "bench-request")

    async def ours() -> None:
        await backend.invoke(request)

    results.append(await _run("warmroute SageMakerBackend.invoke", ours, calls))
    await clients.aclose()

    url = f"{upstream_url}/v2/models/{MODEL}/infer"
    async with aiohttp.ClientSession() as session:

        async def bare() -> None:
            async with session.post(
                url, data=BODY, headers={"Content-Type": "application/json"}
            ) as r:
                await r.read()

        results.append(await _run("bare aiohttp POST (v2 infer)", bare, calls))
    return results


def measure(upstream_url: str, calls: int = 5000) -> list[ClientCost]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_measure(upstream_url, calls))


def markdown(costs: list[ClientCost]) -> str:
    lines = [
        "## SageMaker client cost (in-process, same stub, 32 in flight)",
        "",
        "| client | calls/s | CPU µs per call |",
        "|---|--:|--:|",
        *(f"| {c.label} | {c.calls_per_s:,.0f} | {c.cpu_us_per_call:.0f} |" for c in costs),
    ]
    return "\n".join(lines) + "\n"
