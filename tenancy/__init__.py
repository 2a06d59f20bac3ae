"""Tenant configuration: schema, loading, validation and hot reload. Depends on nothing else here."""

from tenancy.loader import ConfigIssue, load_directory
from tenancy.models import (
    Endpoint,
    EndpointsFile,
    Experiment,
    SageMakerEndpoint,
    Tenant,
    V2Endpoint,
    Variant,
)
from tenancy.snapshot import Snapshot
from tenancy.store import ConfigStore, ReloadOutcome

__all__ = [
    "ConfigIssue",
    "ConfigStore",
    "Endpoint",
    "EndpointsFile",
    "Experiment",
    "ReloadOutcome",
    "SageMakerEndpoint",
    "Snapshot",
    "Tenant",
    "V2Endpoint",
    "Variant",
    "load_directory",
]
