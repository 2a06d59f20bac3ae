"""The two config files as frozen, validated models. Unknown fields are refused so typos fail loudly.

Field names marked "core" in SPEC.md are fixed; everything else here is documented in the README and
in the generated JSON Schema (``schema/``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from tenancy.fields import HttpUrl, ModelId, Name, PositiveMs, Sha256Hex
from tenancy.processing import Ensemble, Fallback, SelectModel, Shadow, Steps
from tenancy.rollout import Rollout

DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- endpoints.yaml ------------------------------------------------------------------------------


class Discovery(Frozen):
    """Instances found by resolving a DNS name (a Kubernetes headless service)."""

    dns: str = Field(min_length=1, description="Name whose A/AAAA records are the instances.")
    port: int = Field(default=8080, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    interval_s: float = Field(default=10.0, gt=0, description="Re-resolution interval.")


class Capacity(Frozen):
    """What one instance can hold; the preloader never loads more than this."""

    max_models: int | None = Field(default=None, ge=1)
    max_bytes: int | None = Field(default=None, ge=1)


class PlacementPolicy(Frozen):
    """How the warm set is spread over the instances (SPEC "Placement")."""

    mode: Literal["auto", "replicate", "spread"] = Field(
        default="auto",
        description="replicate: every instance holds the whole warm set (capped by capacity); "
        "spread: each model on `copies` instances; auto: replicate when the warm set fits on every "
        "instance (less headroom), else spread.",
    )
    min_copies: int = Field(default=1, ge=1, le=64, description="Copies of every placed model.")
    max_copies: int = Field(
        default=3, ge=1, le=64, description="Copies of the busiest models; capped by the instances."
    )
    headroom: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Share of each instance's capacity kept free for on-demand loads.",
    )
    unload_idle_s: float = Field(
        default=600.0, gt=0, description="An on-demand model unused this long is unloaded."
    )

    @model_validator(mode="after")
    def _copies_in_order(self) -> Self:
        if self.min_copies > self.max_copies:
            raise ValueError(
                f"min_copies ({self.min_copies}) must not exceed max_copies ({self.max_copies})"
            )
        return self


class EndpointPreload(Frozen):
    concurrency: int = Field(default=4, ge=1, le=256, description="Loads at once per instance.")
    keep_warm_interval_s: float = Field(
        default=300.0, gt=0, description="Re-invoke warm models this often (below eviction)."
    )
    keep_warm_max_rps: float = Field(
        default=20.0, gt=0, description="Budget so keep-warm cannot overload the endpoint."
    )


class V2Endpoint(Frozen):
    """A self-hosted multi-model server speaking the Open Inference Protocol."""

    kind: Literal["v2"]
    instances: tuple[HttpUrl, ...] = ()
    discovery: Discovery | None = None
    timeout_ms: PositiveMs = 2000
    max_connections: int = Field(default=256, ge=1, description="Pooled connections per instance.")
    capacity: Capacity = Capacity()
    preload: EndpointPreload = EndpointPreload()
    placement: PlacementPolicy = PlacementPolicy()

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if bool(self.instances) == (self.discovery is not None):
            raise ValueError("give exactly one of 'instances' (a non-empty list) or 'discovery'")
        return self


class SageMakerEndpoint(Frozen):
    """An Amazon SageMaker multi-model endpoint, or a pool of them (``endpoint_names``)."""

    kind: Literal["sagemaker"]
    endpoint_name: Name | None = None
    endpoint_names: tuple[Name, ...] = Field(
        default=(),
        description="A pool of MMEs instead of endpoint_name: each model is invoked (and kept "
        "warm) on the first member of its rendezvous ranking only.",
    )
    region: str = Field(min_length=1)
    endpoint_url: HttpUrl | None = Field(
        default=None, description="sagemaker-runtime URL override (VPC interface endpoint, tests)."
    )
    control_endpoint_url: HttpUrl | None = Field(
        default=None,
        description="sagemaker (control plane: DescribeEndpoint) URL override; default endpoint_url.",
    )
    timeout_ms: PositiveMs = 2000
    max_connections: int = Field(default=256, ge=1)
    capacity: Capacity = Capacity()
    preload: EndpointPreload = EndpointPreload()
    describe_interval_s: float = Field(
        default=30.0, gt=0, description="How often the preloader polls DescribeEndpoint."
    )

    @model_validator(mode="after")
    def _one_name(self) -> Self:
        if (self.endpoint_name is None) == (not self.endpoint_names):
            raise ValueError("give exactly one of 'endpoint_name' or 'endpoint_names' (a list)")
        if len(set(self.endpoint_names)) != len(self.endpoint_names):
            raise ValueError("an endpoint name is listed twice in 'endpoint_names'")
        return self

    def members(self) -> tuple[str, ...]:
        """The SageMaker endpoint names: one, or the pool's."""
        return self.endpoint_names or (self.endpoint_name or "",)


Endpoint = Annotated[V2Endpoint | SageMakerEndpoint, Field(discriminator="kind")]


class EndpointsFile(Frozen):
    endpoints: dict[Name, Endpoint] = Field(min_length=1)


# --- tenants/<tenant>.yaml -----------------------------------------------------------------------


class AwsAccessKey(Frozen):
    """AWS credentials a tenant signs SageMaker-front requests with (SigV4). The secret is named,
    never written here: an environment variable or a file (a mounted Kubernetes secret)."""

    access_key_id: str = Field(pattern=r"^[A-Z0-9]{16,128}$")
    secret_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Variable holding the secret.",
    )
    secret_file: str | None = Field(
        default=None,
        min_length=1,
        description="File holding the secret (surrounding whitespace dropped).",
    )

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("give exactly one of 'secret_env' or 'secret_file'")
        return self


class Auth(Frozen):
    api_key_sha256: tuple[Sha256Hex, ...] = Field(
        default=(), description="Hex SHA-256 of each accepted key; empty: no key needed."
    )
    aws_access_keys: tuple[AwsAccessKey, ...] = Field(
        default=(),
        description="SigV4 credentials accepted on the SageMaker-compatible front.",
    )

    @model_validator(mode="after")
    def _distinct_access_keys(self) -> Self:
        ids = [k.access_key_id for k in self.aws_access_keys]
        if len(ids) != len(set(ids)):
            raise ValueError("an access_key_id is listed twice")
        return self


class Limits(Frozen):
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1, le=1024 * 1024 * 1024)
    timeout_ms: PositiveMs = Field(default=5000, description="Bounds the whole request.")
    max_concurrency: int | None = Field(default=None, ge=1, description="Requests at once.")
    rps: float | None = Field(default=None, gt=0, description="Sustained requests per second.")
    burst: int | None = Field(default=None, ge=1, description="Token bucket size; default: rps.")


class Variant(Frozen):
    name: Name
    model: ModelId
    weight: float = Field(ge=0)
    preprocess: Steps | None = Field(default=None, description="Replaces the tenant's steps.")
    postprocess: Steps | None = Field(default=None, description="Replaces the tenant's steps.")


class Experiment(Frozen):
    name: Name
    kind: Literal["canary", "ab"]
    salt: str = ""
    variants: tuple[Variant, ...]
    overrides: dict[Name, tuple[str, ...]] = Field(default_factory=dict)
    ttl_s: int = Field(
        default=90 * 24 * 3600, ge=60, description="How long a stored assignment lives."
    )
    rollout: Rollout | None = Field(
        default=None, description="Step the canary weight up on its own (canary experiments)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [v.name for v in self.variants]
        if self.kind == "canary" and len(self.variants) != 2:
            raise ValueError("a canary has exactly two variants: control first, then canary")
        if self.kind == "ab" and len(self.variants) < 2:
            raise ValueError("an ab experiment needs two or more variants")
        if self.rollout is not None and self.kind != "canary":
            raise ValueError(
                f"a rollout needs a canary experiment (kind: canary), not kind {self.kind!r}"
            )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate variant names: {', '.join(duplicates)}")
        if not any(v.weight > 0 for v in self.variants):
            raise ValueError("all variant weights are zero")
        seen: dict[str, str] = {}
        for variant, units in self.overrides.items():
            if variant not in names:
                raise ValueError(f"override names unknown variant {variant!r}")
            for unit in units:
                if unit in seen:
                    raise ValueError(
                        f"unit {unit!r} is overridden twice ({seen[unit]!r} and {variant!r})"
                    )
                seen[unit] = variant
        return self

    def override_for(self, unit: str) -> Variant | None:
        for variant in self.variants:
            if unit in self.overrides.get(variant.name, ()):
                return variant
        return None


class Preload(Frozen):
    enabled: bool = True
    priority: int = 0
    sample: JsonValue = Field(default=None, description="Warm-up request body (JSON).")
    content_type: str = "application/json"
    size_bytes: int | None = Field(
        default=None, ge=1, description="Model size in memory, for a capacity in bytes."
    )


class Tenant(Frozen):
    endpoint: Name
    model: ModelId
    auth: Auth = Auth()
    limits: Limits = Limits()
    experiment: Experiment | None = None
    preprocess: Steps = Field(default=(), description="Steps run in order on the request.")
    postprocess: Steps = Field(default=(), description="Steps run in order on the answer.")
    shadow: Shadow | None = None
    fallback: Fallback | None = None
    ensemble: Ensemble | None = None
    select_model: SelectModel | None = None
    preload: Preload = Preload()

    @model_validator(mode="after")
    def _control_is_default(self) -> Self:
        experiment = self.experiment
        if experiment is not None and experiment.kind == "canary":
            control = experiment.variants[0]
            if control.model != self.model:
                raise ValueError(
                    f"the canary's control variant {control.name!r} must use the tenant's default "
                    f"model {self.model!r}, not {control.model!r}"
                )
        return self

    @model_validator(mode="after")
    def _routing_modes(self) -> Self:
        # One way of choosing the model per tenant: an experiment, a selection or an ensemble.
        modes = [
            name
            for name, given in (
                ("experiment", self.experiment),
                ("select_model", self.select_model),
                ("ensemble", self.ensemble),
            )
            if given is not None
        ]
        if len(modes) > 1:
            raise ValueError(
                f"use one of experiment, select_model, ensemble, not {' and '.join(modes)}"
            )
        if self.ensemble is not None and self.fallback is not None:
            raise ValueError(
                "an ensemble has its own failure policy (min_success): drop 'fallback'"
            )
        if self.fallback is not None:
            if self.fallback.model == self.model:
                raise ValueError("the fallback model must differ from the tenant's model")
            if self.fallback.reserve_ms >= self.limits.timeout_ms:
                raise ValueError("fallback.reserve_ms must be below limits.timeout_ms")
        return self

    def models(self) -> tuple[str, ...]:
        """Every model this tenant's requests can reach (the warm set): default first, then
        variants, selection, ensemble, fallback and shadow models, without repeats."""
        found = [self.model]
        if self.experiment is not None:
            found += [v.model for v in self.experiment.variants]
        if self.select_model is not None:
            found += self.select_model.models.values()
            if self.select_model.default is not None:
                found.append(self.select_model.default)
        if self.ensemble is not None:
            found += self.ensemble.models
        for extra in (self.fallback, self.shadow):
            if extra is not None:
                found.append(extra.model)
        return tuple(dict.fromkeys(found))
