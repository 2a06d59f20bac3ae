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


def _optional_objects(node: Any) -> Any:
    """``anyOf: [{$ref: X}, {type: null}]`` (an optional section) becomes ``if not null then X else
    null``: a validator then reports the real problem inside the section (``-5 is less than the
    minimum of 0`` at its path) instead of "not valid under any of the given schemas"."""
    if isinstance(node, list):
        return [_optional_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _optional_objects(value) for key, value in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        ref = next(o for o in options if o != {"type": "null"})
        if set(ref) == {"$ref"}:
            del node["anyOf"]
            node.update({"if": {"not": {"type": "null"}}, "then": ref, "else": {"type": "null"}})
    return node


def render(model: type[EndpointsFile] | type[Tenant]) -> bytes:
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **_optional_objects(model.model_json_schema(mode="validation")),
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
