"""JSON Schema for both config files, generated from the models (committed under ``schema/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tenancy.models import EndpointsFile, Tenant

SCHEMA_FILES: dict[str, type[EndpointsFile] | type[Tenant]] = {
    "endpoints.schema.json": EndpointsFile,
    "tenant.schema.json": Tenant,
}


def render(model: type[EndpointsFile] | type[Tenant]) -> bytes:
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(mode="validation"),
    }
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMA_FILES.items():
        path = folder / name
        path.write_bytes(render(model))
        written.append(path)
    return written
