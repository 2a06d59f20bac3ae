"""The many-models phase of ``make bench-coldstart``: more models than one instance holds.

Three MLServer instances of ``capacity.max_models`` 6 (default ``headroom`` 0.1: five placed models
each, one slot for on-demand loads) serve a repository of 12 models (the trained iris models copied
under new names, each with its own ``model-settings.json``), four tenants per model. Traffic over the
models is Zipf (s = 1.1); the same seeded request stream runs twice, on fresh instances each time:

- **replicate** (``placement: {mode: replicate}``, today's behaviour): every instance holds the same
  top five models; the other seven share the three on-demand slots;
- **spread** (``placement: {mode: spread}``): every model on at least one instance, the busiest on
  more.

Each run: every model unloaded, the endpoint's recent traffic seeded in Redis with the stream's
Zipf shares (what the router's own counters would have recorded), ``preloader --once``, then the
stream through the router, one request at a time. Reported: each tenant's first request and every
request (p50 / p99 / max), and the router's ``router_cold_starts_total`` and
``router_ondemand_loads_total`` over the stream.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.coldstart import Client, Phase, log, preload_once, start_instances, start_router
from bench.coldstart import Setup as ClassicSetup
from bench.procs import Processes
from devstack import mlserver as mls
from router.redis_keys import preloader_lock_key, traffic_key, warm_flag_key, warm_map_key

SOURCES = ("iris-lr", "iris-tree", "iris-knn")  # trained models with the same 4-feature input
IRIS_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                         "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
MODES = ("replicate", "spread")


@dataclass(frozen=True, slots=True)
class ManySettings:
    models: int = 12
    instances: int = 3
    max_models: int = 6
    tenants_per_model: int = 4
    requests: int = 600
    zipf_s: float = 1.1
    seed: int = 7


def model_names(count: int) -> list[str]:
    return [f"m{i:02d}" for i in range(count)]


def zipf_weights(count: int, s: float) -> list[float]:
    """Shares of traffic of ranks 1..count, summing to 1."""
    raw = [1.0 / (rank**s) for rank in range(1, count + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def request_stream(
    models: Sequence[str], tenants_per_model: int, count: int, s: float, seed: int
) -> list[tuple[str, str]]:
    """``count`` (tenant, model) pairs: models drawn Zipf by their order in ``models``, a tenant of
    the model drawn uniformly. Deterministic in ``seed``, so both modes see the same stream."""
    rng = random.Random(seed)
    picks = rng.choices(list(models), weights=zipf_weights(len(models), s), k=count)
    return [(f"t{rng.randrange(tenants_per_model)}-{model}", model) for model in picks]


def build_repository(source: Path, root: Path, names: Sequence[str]) -> Path:
    """A model repository of ``names``, each a trained iris model (in rotation) under a new name."""
    for index, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(
            source / SOURCES[index % len(SOURCES)] / "model.joblib", folder / "model.joblib"
        )
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {
                "uri": "./model.joblib",
                "version": "v1",
                "extra": {"method": "predict"},
            },
        }
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return root


def write_config(
    directory: Path, endpoint: str, urls: list[str], mode: str, settings: ManySettings
) -> None:
    """Endpoint and tenants (JSON is YAML); replaces whatever the directory held."""
    if directory.exists():
        shutil.rmtree(directory)
    (directory / "tenants").mkdir(parents=True)
    endpoints = {
        "endpoints": {
            endpoint: {
                "kind": "v2",
                "instances": urls,
                "capacity": {"max_models": settings.max_models},
                "placement": {"mode": mode, "min_copies": 1, "max_copies": 3},
            }
        }
    }
    (directory / "endpoints.yaml").write_text(json.dumps(endpoints, indent=2) + "\n")
    for model in model_names(settings.models):
        for i in range(settings.tenants_per_model):
            tenant = {
                "endpoint": endpoint,
                "model": model,
                "limits": {"timeout_ms": 30000},
                "preload": {"priority": 1, "sample": IRIS_BODY},
            }
            (directory / "tenants" / f"t{i}-{model}.yaml").write_text(json.dumps(tenant) + "\n")


def seed_traffic(redis_url: str, endpoint: str, settings: ManySettings) -> None:
    """The stream's Zipf shares as the router's per-minute traffic counters would hold them."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    key = traffic_key(endpoint, int(time.time() // 60))
    weights = zipf_weights(settings.models, settings.zipf_s)
    with contextlib.closing(client):
        for model, weight in zip(model_names(settings.models), weights, strict=True):
            client.hincrby(key, model, max(1, round(weight * settings.requests)))
        client.expire(key, 3600)


def cleanup(redis_url: str, endpoint: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    with contextlib.closing(client), contextlib.suppress(redis.RedisError, OSError):
        keys = [warm_map_key(endpoint), warm_flag_key(endpoint), preloader_lock_key(endpoint)]
        keys += [k.decode() for k in client.scan_iter(match=traffic_key(endpoint, 0)[:-1] + "*")]
        client.delete(*keys)


@dataclass
class ModeResult:
    mode: str
    first: Phase
    every: Phase
    ondemand_loads: float = 0.0
    held: dict[str, int] = field(default_factory=dict)  # instance -> models loaded after --once
    warm_models: int = 0  # distinct models loaded somewhere after --once
    preload_s: float = 0.0


def run_mode(
    mode: str,
    client: Client,
    instances: list[mls.MLServerInstance],
    config: Path,
    endpoint: str,
    redis_url: str,
    settings: ManySettings,
    stream: list[tuple[str, str]],
) -> ModeResult:
    result = ModeResult(
        mode, Phase(f"{mode}: each tenant's first request"), Phase(f"{mode}: every request")
    )
    for instance in instances:
        instance.unload_all()
    write_config(config, endpoint, [i.url for i in instances], mode, settings)
    client.get("/v1/admin/reload", method="POST")
    seed_traffic(redis_url, endpoint, settings)
    result.preload_s = preload_once(ClassicSetup(config, endpoint, {}), redis_url)
    held = {i.url: i.loaded_models() for i in instances}
    result.held = {url: len(models) for url, models in held.items()}
    result.warm_models = len(set().union(*held.values()))
    time.sleep(1.5)  # the router re-reads the warm map every second
    body = json.dumps(IRIS_BODY).encode()
    seen: set[str] = set()
    ondemand_before = client.total("router_ondemand_loads_total")
    with result.every.counting(client):
        for tenant, _model in stream:
            elapsed = client.invoke(tenant, body)
            result.every.latencies.append(elapsed)
            if tenant not in seen:
                seen.add(tenant)
                result.first.latencies.append(elapsed)
    result.ondemand_loads = client.total("router_ondemand_loads_total") - ondemand_before
    return result


def run(
    procs: Processes, work: Path, redis_url: str, nonce: str, settings: ManySettings
) -> list[ModeResult]:
    """Both modes on the same instances and router; returns one result per mode."""
    repository = build_repository(
        mls.models_dir(), work / "many-models", model_names(settings.models)
    )
    log(
        f"many models: starting {settings.instances} MLServer instances over {settings.models} models"
    )
    instances = start_instances(work, settings.instances, repository, prefix="many-mlserver")
    stream = request_stream(
        model_names(settings.models), settings.tenants_per_model, settings.requests,
        settings.zipf_s, settings.seed,
    )  # fmt: skip
    results: list[ModeResult] = []
    endpoints = [f"many-{mode}-{nonce}" for mode in MODES]
    try:
        config = work / "many-config"
        write_config(config, endpoints[0], [i.url for i in instances], MODES[0], settings)
        router = start_router(procs, ClassicSetup(config, endpoints[0], {}), redis_url)
        client = Client(router.url)
        for mode, endpoint in zip(MODES, endpoints, strict=True):
            results.append(
                run_mode(mode, client, instances, config, endpoint, redis_url, settings, stream)
            )
            log(f"many models: {mode} done")
        client.close()
    finally:
        for instance in instances:
            instance.stop()
        for endpoint in endpoints:
            cleanup(redis_url, endpoint)
    return results


def table(results: list[ModeResult]) -> str:
    lines = [
        "| placement | models warm after `--once` (per instance) | first requests | first p50 ms "
        "| first p99 ms | all requests p50 / p99 / max ms | cold starts | on-demand loads |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        f50, f99, _ = r.first.stats()
        a50, a99, amax = r.every.stats()
        per = " + ".join(str(n) for n in r.held.values())
        lines.append(
            f"| `{r.mode}` | {r.warm_models} ({per}) | {len(r.first.latencies)} | {f50:.2f} "
            f"| {f99:.2f} | {a50:.2f} / {a99:.2f} / {amax:.2f} | {r.every.cold_starts:.0f} "
            f"| {r.ondemand_loads:.0f} |"
        )
    return "\n".join(lines)


def render(results: list[ModeResult], settings: ManySettings) -> str:
    notes = [f"- `{r.mode}`: `preloader --once` took {r.preload_s:.2f} s" for r in results]
    return "\n".join(
        [
            "## Many models (more than one instance holds)",
            "",
            f"{settings.instances} MLServer instances, `capacity.max_models: {settings.max_models}` "
            f"(headroom 0.1), {settings.models} models x {settings.tenants_per_model} tenants, "
            f"{settings.requests} requests drawn Zipf (s = {settings.zipf_s}, seed {settings.seed}) "
            "over the models, the same stream for both modes, one at a time through the router.",
            "",
            table(results),
            "",
            *notes,
        ]
    )
