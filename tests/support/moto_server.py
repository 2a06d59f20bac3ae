"""A real moto server subprocess, and helpers for SageMaker control-plane and canned results.

moto 5.2 behaviour worth knowing (read from its source, checked by the tests):

- ``sagemaker-runtime`` ``InvokeEndpoint`` checks neither the endpoint nor the TargetModel and
  returns canned output: ``Body=b"body"``, ``ContentType="content_type"``,
  ``InvokedProductionVariant="invoked_production_variant"``,
  ``CustomAttributes="custom_attributes"`` unless results were queued.
- ``POST /moto-api/static/sagemaker/endpoint-results`` with
  ``{"account_id": ..., "region": ..., "results": [{"Body": str, "ContentType": str,
  "InvokedProductionVariant": str, "CustomAttributes": str}, ...]}`` (account and region
  optional, defaults 123456789012 / us-east-1; only ``Body`` required) appends to one FIFO queue
  per account+region, answered 201 with an empty body.
- A result popped from the queue is **memoised per endpoint and request**: the key is every
  ``X-Amzn-SageMaker-*`` header, ``Accept`` and the body. Sending the identical request again
  returns the same result and does not consume the queue; vary the body (or TargetModel) to
  consume the next one. ``POST /moto-api/reset`` clears queues and memos.
- ``update_endpoint_weights_and_capacities`` must carry ``DesiredInstanceCount`` for every
  variant, or moto sets that variant's counts to None. Endpoints are ``InService`` at once.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from devstack.ports import free_port, urlopen_direct, wait_http

from .aws import ACCOUNT_ID, REGION, sagemaker_client

__all__ = [
    "MotoServer",
    "create_mme_endpoint",
    "current_instance_count",
    "queue_sagemaker_results",
    "reset_moto",
    "set_instance_count",
]

_START_TIMEOUT_S = 20.0
_STOP_GRACE_S = 5.0


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    if script.is_file():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    """``moto_server`` on a free loopback port; started by the constructor, ready when it returns."""

    def __init__(self, *, port: int | None = None, timeout: float = _START_TIMEOUT_S) -> None:
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"moto-{self.port}-"))
        self.log_path = self.dir / "moto.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                _moto_command(self.port),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"moto_server exited with {self.process.returncode}:\n{log}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"moto_server on {self.url} not ready within {timeout}s")
            try:
                wait_http(f"{self.url}/moto-api/data.json", min(0.5, remaining))
            except TimeoutError:
                continue
            return

    def reset(self) -> None:
        """``POST /moto-api/reset``: forget every resource, queued result and memo."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", data=b"", method="POST")  # noqa: S310
        with urlopen_direct(req, 10) as resp:
            resp.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MotoServer(url={self.url!r}, pid={self.process.pid})"


async def reset_moto(url: str) -> None:
    """Async ``POST /moto-api/reset``."""
    async with aiohttp.ClientSession() as http, http.post(f"{url}/moto-api/reset") as resp:
        resp.raise_for_status()


async def queue_sagemaker_results(
    url: str,
    results: list[dict[str, str]],
    *,
    account_id: str = ACCOUNT_ID,
    region: str = REGION,
) -> None:
    """Queue canned ``InvokeEndpoint`` answers, in order.

    Each result: ``{"Body": str, "ContentType"?: str, "InvokedProductionVariant"?: str,
    "CustomAttributes"?: str}``. See the module docstring for moto's per-request memo.
    """
    for result in results:
        if "Body" not in result:
            raise ValueError(f"every result needs a Body: {result!r}")
    payload: dict[str, Any] = {"account_id": account_id, "region": region, "results": results}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/moto-api/static/sagemaker/endpoint-results", json=payload) as resp,
    ):
        if resp.status != 201:
            raise RuntimeError(f"moto refused the results: {resp.status} {await resp.text()}")


async def create_mme_endpoint(
    url: str,
    name: str,
    instance_count: int,
    *,
    variant_name: str = "AllTraffic",
    region: str = REGION,
) -> str:
    """Create model, endpoint config and endpoint ``name`` (one multi-model variant); its ARN."""
    async with sagemaker_client(url, region=region) as sm:
        await sm.create_model(
            ModelName=f"{name}-model",
            ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/sagemaker-execution",
            PrimaryContainer={
                "Image": f"{ACCOUNT_ID}.dkr.ecr.{region}.amazonaws.com/mme:latest",
                "Mode": "MultiModel",
                "ModelDataUrl": f"s3://sagemaker-{region}-{ACCOUNT_ID}/{name}/",
            },
        )
        await sm.create_endpoint_config(
            EndpointConfigName=f"{name}-config",
            ProductionVariants=[
                {
                    "VariantName": variant_name,
                    "ModelName": f"{name}-model",
                    "InitialInstanceCount": instance_count,
                    "InstanceType": "ml.m5.large",
                    "InitialVariantWeight": 1.0,
                }
            ],
        )
        created = await sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")
        return created["EndpointArn"]


async def set_instance_count(
    url: str,
    name: str,
    count: int,
    *,
    variant_name: str = "AllTraffic",
    region: str = REGION,
) -> None:
    """Scale variant ``variant_name`` of endpoint ``name`` to ``count`` instances (scale-out/in)."""
    async with sagemaker_client(url, region=region) as sm:
        await sm.update_endpoint_weights_and_capacities(
            EndpointName=name,
            DesiredWeightsAndCapacities=[
                {"VariantName": variant_name, "DesiredWeight": 1.0, "DesiredInstanceCount": count}
            ],
        )


async def current_instance_count(url: str, name: str, *, region: str = REGION) -> int:
    """Sum of ``CurrentInstanceCount`` over the endpoint's variants, as ``DescribeEndpoint`` says."""
    async with sagemaker_client(url, region=region) as sm:
        described = await sm.describe_endpoint(EndpointName=name)
    return sum(v.get("CurrentInstanceCount") or 0 for v in described.get("ProductionVariants", []))
