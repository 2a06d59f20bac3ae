"""Generated reference pages under ``docs/``: the config reference (from the committed JSON
Schemas in ``schema/``) and the metrics reference (from the router's and the preloader's own
registries). ``python -m devstack docs docs/`` (``make docs``) writes them; a test fails when the
committed pages are stale."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from devstack.mlserver import repo_root
from preloader.metrics import PreloaderMetrics
from router.metrics import RouterMetrics

__all__ = ["PAGES", "config_reference", "metrics_reference", "write"]

_SCHEMAS = (
    ("endpoints.yaml", "endpoints.schema.json", "one file, `DIR/endpoints.yaml`"),
    ("tenants/TENANT.yaml", "tenant.schema.json", "one file per tenant; the file name is its id"),
)
_BOUNDS = (
    ("minimum", "≥"),
    ("exclusiveMinimum", ">"),
    ("maximum", "≤"),
    ("exclusiveMaximum", "<"),
    ("minLength", "length ≥"),
    ("maxLength", "length ≤"),
    ("minItems", "items ≥"),
    ("maxItems", "items ≤"),
)


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_of(node: dict[str, Any]) -> str:
    """A short type: ``integer ≥ 1``, ``[Variant]``, ``Limits``, ``v2 | sagemaker``."""
    if "$ref" in node:
        return f"[{_ref_name(node['$ref'])}](#{_ref_name(node['$ref']).lower()})"
    if "then" in node:  # an optional section (tenancy.schema): if not null then X else null
        return _type_of(node["then"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node[key] if o != {"type": "null"}]
            return " or ".join(_type_of(o) for o in options)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " / ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of name → {_type_of(node['additionalProperties'])}"
    if kind == "object" and node.get("patternProperties"):
        ((pattern, value),) = node["patternProperties"].items()
        return f"map of name (`{pattern}`) → {_type_of(value)}"
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    bounds = [f"{sign} {node[key]}" for key, sign in _BOUNDS if key in node]
    if "pattern" in node:
        bounds.append(f"matching `{node['pattern']}`")
    return ", ".join([text, *bounds])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(node: dict[str, Any]) -> list[str]:
    required = set(node.get("required", ()))
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, field in node.get("properties", {}).items():
        default = "required" if name in required else f"`{json.dumps(field.get('default'))}`"
        if name not in required and "default" not in field:
            default = "—"
        meaning = field.get("description", "")
        rows.append(
            f"| `{name}` | {_cell(_type_of(field))} | {_cell(default)} | {_cell(meaning)} |"
        )
    return rows


def config_reference(schema_dir: Path) -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from `schema/*.schema.json` (themselves generated from the models in "
        "`tenancy/`) by `make docs`; do not edit by hand. Unknown fields are refused; "
        "`python -m tenancy check DIR` (`make check DIR=...`) validates a directory.",
    ]
    for file, schema_name, what in _SCHEMAS:
        schema = json.loads((schema_dir / schema_name).read_text())
        lines += [
            "",
            f"## {file}",
            "",
            f"{what[0].upper()}{what[1:]}. Schema: `schema/{schema_name}`.",
            "",
        ]
        lines += _table(schema)
        for name, definition in sorted(schema.get("$defs", {}).items()):
            if definition.get("type") != "object" or "properties" not in definition:
                continue
            lines += ["", f"### {name}", ""]
            if definition.get("description"):
                lines += [_cell(definition["description"]), ""]
            lines += _table(definition)
    return "\n".join(lines) + "\n"


def _families(registry: CollectorRegistry) -> list[tuple[str, str, str, list[str]]]:
    found = []
    for family in registry.collect():
        labels: list[str] = []
        for sample in family.samples:
            labels += [k for k in sample.labels if k not in labels and k not in {"le"}]
        shown = f"{family.name}_total" if family.type == "counter" else family.name
        found.append((shown, family.type, family.documentation, labels))
    return sorted(found)


def _declared_labels(registry: CollectorRegistry) -> dict[str, list[str]]:
    """Label names as declared (samples only exist once a label set was used). prometheus_client
    has no public way to list a registry's collectors; its private map is read defensively."""
    declared: dict[str, list[str]] = {}
    collectors = getattr(registry, "_collector_to_names", {})
    for value in list(collectors):
        names = getattr(value, "_labelnames", None)
        name = getattr(value, "_name", None)
        if isinstance(names, tuple) and isinstance(name, str):
            declared[name] = list(names)
    return declared


def metrics_reference() -> str:
    lines = [
        "# Metrics",
        "",
        "Generated from the router's and the preloader's registries by `make docs`; do not edit "
        "by hand. Each process serves its own on `GET /metrics` (router :8080, preloader :9090). "
        "Histograms also export `_bucket`, `_sum` and `_count`; the Grafana dashboard "
        "`dashboards/warmroute.json` draws the main ones (picture: `docs/dashboard.png`).",
    ]
    owners = [
        ("Router (`python -m router`)", RouterMetrics().registry),
        ("Preloader (`python -m preloader`)", PreloaderMetrics().registry),
    ]
    for title, registry in owners:
        declared = _declared_labels(registry)
        lines += [
            "",
            f"## {title}",
            "",
            "| metric | type | labels | meaning |",
            "|---|---|---|---|",
        ]
        for shown, kind, doc, labels in _families(registry):
            base = shown.removesuffix("_total")
            names = declared.get(base, labels)
            label_text = ", ".join(f"`{n}`" for n in names) or "—"
            lines.append(f"| `{shown}` | {kind} | {label_text} | {_cell(doc)} |")
    return "\n".join(lines) + "\n"


PAGES: dict[str, Callable[[], str]] = {
    "config.md": lambda: config_reference(repo_root() / "schema"),
    "metrics.md": metrics_reference,
}


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, render in PAGES.items():
        path = folder / name
        path.write_text(render(), encoding="utf-8")
        written.append(path)
    return written
