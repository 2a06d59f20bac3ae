"""The router config the benchmark generates (JSON is valid YAML, so no quoting games)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

TENANT = "bench"
CANARY_TENANT = "bench-canary"
MODEL = "bench-model"
CANARY_MODEL = "bench-model-v2"
ENDPOINT = "bench-mme"
SM_TENANT = "bench-sm"
SM_ENDPOINT = "bench-sm-mme"
# High enough never to refuse, so the limiter runs on the hot path without shaping the load.
LIMITS = {"timeout_ms": 2000, "max_concurrency": 100_000, "rps": 1_000_000}


@dataclass(frozen=True, slots=True)
class BenchConfig:
    directory: Path
    api_key: str
    canary_api_key: str
    sm_api_key: str
    experiment: str  # unique per run: its stored assignments are found and deleted afterwards


def write_config(directory: Path, upstream_url: str, nonce: str) -> BenchConfig:
    config = BenchConfig(
        directory=directory,
        api_key=f"bench-key-{nonce}",
        canary_api_key=f"bench-canary-key-{nonce}",
        sm_api_key=f"bench-sm-key-{nonce}",
        experiment=f"bench-{nonce}",
    )
    (directory / "tenants").mkdir(parents=True, exist_ok=True)
    endpoints = {
        "endpoints": {
            ENDPOINT: {"kind": "v2", "instances": [upstream_url]},
            # The same stub, spoken to as a SageMaker endpoint (signed InvokeEndpoint).
            SM_ENDPOINT: {
                "kind": "sagemaker",
                "endpoint_name": "bench-mme",
                "region": "us-east-1",
                "endpoint_url": upstream_url,
            },
        }
    }
    tenant = {
        "endpoint": ENDPOINT,
        "model": MODEL,
        "auth": {"api_key_sha256": [_sha256(config.api_key)]},
        "limits": LIMITS,
    }
    canary = {
        "endpoint": ENDPOINT,
        "model": MODEL,
        "auth": {"api_key_sha256": [_sha256(config.canary_api_key)]},
        "limits": LIMITS,
        "experiment": {
            "name": config.experiment,
            "kind": "canary",
            "salt": nonce,
            "ttl_s": 3600,
            "variants": [
                {"name": "control", "model": MODEL, "weight": 50},
                {"name": "canary", "model": CANARY_MODEL, "weight": 50},
            ],
        },
    }
    sagemaker = {
        "endpoint": SM_ENDPOINT,
        "model": MODEL,
        "auth": {"api_key_sha256": [_sha256(config.sm_api_key)]},
        "limits": LIMITS,
    }
    _write(directory / "endpoints.yaml", endpoints)
    _write(directory / "tenants" / f"{SM_TENANT}.yaml", sagemaker)
    _write(directory / "tenants" / f"{TENANT}.yaml", tenant)
    _write(directory / "tenants" / f"{CANARY_TENANT}.yaml", canary)
    return config


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
