"""docs/ stays true: the OpenAPI document is valid and lists exactly the routes and error codes the
router has, error bodies on a live router match its schema, and the generated reference pages
are current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate

from devstack.docs import PAGES
from devstack.ports import free_port
from router.app import create_app
from router.errors import RouterError
from router.settings import Settings
from tests.router_fixtures import ConfigDir, RouterFactory

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
# Codes the error middleware gives outside the RouterError classes (router/http_errors.py).
MIDDLEWARE_CODES = {"not_found", "method_not_allowed", "internal_error"}


def openapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCS / "openapi.yaml").read_text())
    return document


def router_codes() -> set[str]:
    found: set[str] = set()
    todo: list[type[RouterError]] = [RouterError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        code = getattr(cls, "code", None)
        if isinstance(code, str) and code:
            found.add(code)
    return found | MIDDLEWARE_CODES


def test_openapi_document_is_valid() -> None:
    validate(openapi())


def test_openapi_lists_exactly_the_routes_the_router_serves() -> None:
    app = create_app(Settings(config_dir=REPO / "examples" / "config"))
    served: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and isinstance(path, str):
            served.add((path, route.method.lower()))
    documented = {
        (path, method)
        for path, item in openapi()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert served == documented, (
        f"served, not documented: {sorted(served - documented)}; "
        f"documented, not served: {sorted(documented - served)}: "
        "describe each route in docs/openapi.yaml and docs/api.md"
    )


def test_error_codes_match_the_router_and_errors_md() -> None:
    documented = set(openapi()["components"]["schemas"]["ErrorCode"]["enum"])
    assert documented == router_codes(), (
        "add each new code to ErrorCode in docs/openapi.yaml and to the table in docs/errors.md"
    )
    table = (DOCS / "errors.md").read_text()
    assert all(f"`{code}`" in table for code in documented)


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_reference_pages_are_current(name: str) -> None:
    committed = (DOCS / name).read_text(encoding="utf-8")
    assert committed == PAGES[name](), "run `make schema` (or `make docs`) and commit docs/"


async def test_live_error_bodies_match_the_documented_schema(
    tmp_path: Path, start_router: RouterFactory
) -> None:
    """The router's actual answers for a missing tenant, an unknown route, a wrong method, a bad
    admin query and an unreachable model server carry the documented status and Error body."""
    cfg = ConfigDir(tmp_path / "cfg")
    cfg.endpoints({"mme": {"kind": "v2", "instances": [f"http://127.0.0.1:{free_port()}"]}})
    cfg.tenant("acme", endpoint="mme", model="iris-lr")
    router = await start_router(cfg)
    document = openapi()
    # The Error schema at the root, beside the components its $refs point into.
    root = {**document["components"]["schemas"]["Error"], "components": document["components"]}
    validator = jsonschema.Draft202012Validator(root)
    invoke = document["paths"]["/v1/tenants/{tenant}/invocations"]["post"]["responses"]
    cases = [
        ("POST", "/v1/tenants/nope/invocations", 404, "tenant_not_found"),
        ("POST", "/v1/tenants/acme/invocations", 502, "upstream_error"),
        ("GET", "/v1/tenants/acme/invocations", 405, "method_not_allowed"),
        ("GET", "/no/such/route", 404, "not_found"),
        ("GET", "/v1/admin/tenants/acme/assignment", 400, "invalid_request"),
    ]
    for method, path, status, code in cases:
        async with router.session.request(
            method, router.url + path, data=b'{"inputs": []}'
        ) as resp:
            assert resp.status == status, (path, await resp.text())
            body = await resp.json()
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (path, errors)
        assert body["error"]["code"] == code
        if path.endswith("/invocations") and method == "POST":
            assert str(status) in invoke
