"""aiobotocore clients pointed at a local endpoint (moto, the SageMaker front), dummy credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

if TYPE_CHECKING:
    from types_aiobotocore_sagemaker import SageMakerClient
    from types_aiobotocore_sagemaker_runtime import SageMakerRuntimeClient

__all__ = ["ACCOUNT_ID", "DUMMY_KEY", "REGION", "runtime_client", "sagemaker_client"]

ACCOUNT_ID = "123456789012"  # moto's default account, also used by the SageMaker front
REGION = "us-east-1"
DUMMY_KEY = "testing"


@asynccontextmanager
async def sagemaker_client(
    url: str, *, region: str = REGION, config: AioConfig | None = None
) -> AsyncIterator[SageMakerClient]:
    """The ``sagemaker`` control-plane client on ``url``."""
    async with get_session().create_client(
        "sagemaker",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id=DUMMY_KEY,
        aws_secret_access_key=DUMMY_KEY,
        config=config,
    ) as client:
        yield client


@asynccontextmanager
async def runtime_client(
    url: str, *, region: str = REGION, config: AioConfig | None = None
) -> AsyncIterator[SageMakerRuntimeClient]:
    """The ``sagemaker-runtime`` data-plane client on ``url``.

    botocore retries throttling and 5xx answers by itself (legacy mode: up to 5 attempts);
    pass ``config=AioConfig(retries={"total_max_attempts": 1})`` to see the first answer.
    """
    async with get_session().create_client(
        "sagemaker-runtime",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id=DUMMY_KEY,
        aws_secret_access_key=DUMMY_KEY,
        config=config,
    ) as client:
        yield client
