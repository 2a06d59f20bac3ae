"""Read a config directory into a Snapshot, validating each file on its own.

Layout (SPEC.md): ``DIR/endpoints.yaml`` and ``DIR/tenants/<tenant>.yaml``; the file name is the tenant
id. Every problem becomes one ``ConfigIssue`` printed as ``FILE: field.path: message``, FILE relative
to DIR. One bad tenant file never hides the others: callers decide whether to keep a last good version.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tenancy.messages import BOUNDS, did_you_mean, number, yaml_location
from tenancy.models import Endpoint, EndpointsFile, Tenant

ENDPOINTS_FILE = "endpoints.yaml"
TENANTS_DIR = "tenants"
TENANT_SUFFIXES = (".yaml", ".yml")
# Far above any real config file (a Kubernetes ConfigMap holds 1 MiB in all); past it a file is
# refused before it is read, so a huge file costs neither memory nor a parse.
MAX_FILE_BYTES = 1 << 20
# PyYAML's scanner is quadratic in flow nesting ("[[[[..." of 5000 levels takes ~10 s before it
# fails on recursion), so deep flow nesting is refused before parsing. Real files nest a few levels.
MAX_FLOW_NESTING = 64
TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file; follows symlinks, so a ConfigMap swap changes it."""

    mtime_ns: int
    size: int
    inode: int
    device: int


@dataclass(frozen=True, slots=True)
class Parsed:
    """One file's outcome: a model when valid, issues when not."""

    stamp: FileStamp | None
    value: BaseModel | None
    issues: tuple[ConfigIssue, ...]


def stamp(path: Path) -> FileStamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def tenant_files(root: Path) -> dict[str, Path]:
    """tenant id -> file. Hidden files (Kubernetes' ``..data`` entries) are skipped."""
    folder = root / TENANTS_DIR
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.suffix not in TENANT_SUFFIXES:
            continue
        found[entry.stem] = entry
    return found


def scan(root: Path) -> dict[str, FileStamp | None]:
    """Stamps of every file the config consists of, keyed by path relative to root."""
    stamps: dict[str, FileStamp | None] = {ENDPOINTS_FILE: stamp(root / ENDPOINTS_FILE)}
    for path in tenant_files(root).values():
        stamps[f"{TENANTS_DIR}/{path.name}"] = stamp(path)
    return stamps


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def _validation_issues(
    rel: str, error: ValidationError, model: type[BaseModel]
) -> tuple[ConfigIssue, ...]:
    issues = []
    for item in error.errors(include_url=False):
        # Discriminated unions add the tag ("v2", "sagemaker") to the path: drop it, users never typed it.
        loc = tuple(p for p in item["loc"] if p not in ("v2", "sagemaker"))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field" + did_you_mean(model, item["loc"])
        elif item["type"] in BOUNDS:
            word, key = BOUNDS[item["type"]]
            limit = item.get("ctx", {}).get(key)
            if limit is not None:  # steps re-raise nested errors without their ctx
                message = f"must be {word} {number(limit)}, got {number(item['input'])}"
        issues.append(ConfigIssue(rel, _location(loc), message))
    return tuple(issues)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names one key twice: YAML says keys are unique; PyYAML would keep the last."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys (merge keys ``<<`` excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: the base loader reports it
                continue
            if seen:
                raise DuplicateKeyError(
                    None, None,
                    f"duplicate key {key!r} (first on line {first_line[key] + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _too_deep_at(text: str) -> int | None:
    """The line where flow brackets first nest past MAX_FLOW_NESTING, or None.

    Brackets inside quoted strings are counted too: an over-estimate that no real file reaches.
    """
    if text.count("[") + text.count("{") <= MAX_FLOW_NESTING:
        return None  # cannot be that deep: no scan
    depth = 0
    for index, char in enumerate(text):
        if char in "[{":
            depth += 1
            if depth > MAX_FLOW_NESTING:
                return text.count("\n", 0, index) + 1
        elif char in "]}" and depth:
            depth -= 1
    return None


def _read_yaml(path: Path, rel: str) -> tuple[Any, tuple[ConfigIssue, ...]]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            message = f"file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit"
            return None, (ConfigIssue(rel, "(file)", message),)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, (ConfigIssue(rel, "(file)", f"cannot read: {exc}"),)
    too_deep = _too_deep_at(text)
    if too_deep is not None:
        message = f"nested deeper than {MAX_FLOW_NESTING} levels of [ ] or {{ }}"
        return None, (ConfigIssue(rel, f"line {too_deep}", message),)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader), ()  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        return None, (ConfigIssue(rel, f"line {line}", exc.problem or "duplicate key"),)
    except yaml.MarkedYAMLError as exc:
        where, problem = yaml_location(text, exc)
        return None, (ConfigIssue(rel, where, problem),)
    except yaml.YAMLError as exc:
        return None, (ConfigIssue(rel, "line 1", str(exc)),)


def parse_file(path: Path, rel: str, model: type[BaseModel]) -> Parsed:
    """One file's outcome. Whatever the file holds (nesting deep enough to exhaust the parser's
    recursion, binary, huge), reading it is this file's problem only: never an exception that
    would stop the caller (the reload watcher) or hide the other files."""
    file_stamp = stamp(path)
    try:
        data, issues = _read_yaml(path, rel)
        if issues:
            return Parsed(file_stamp, None, issues)
        if not isinstance(data, dict):
            return Parsed(file_stamp, None, (ConfigIssue(rel, "(root)", "expected a mapping"),))
        try:
            return Parsed(file_stamp, model.model_validate(data), ())
        except ValidationError as exc:
            return Parsed(file_stamp, None, _validation_issues(rel, exc, model))
    except Exception as exc:  # the per-file boundary (RecursionError, MemoryError's kin, bugs)
        message = f"cannot load: {type(exc).__name__}: {str(exc)[:200]}"
        return Parsed(file_stamp, None, (ConfigIssue(rel, "(file)", message),))


@dataclass(frozen=True, slots=True)
class DirectoryState:
    """Everything read from a directory, before deciding what serves."""

    endpoints: Parsed
    tenants: Mapping[str, Parsed]  # tenant id -> parsed file
    files: Mapping[str, str]  # tenant id -> relative file name

    def issues(self) -> list[ConfigIssue]:
        found = list(self.endpoints.issues)
        for parsed in self.tenants.values():
            found.extend(parsed.issues)
        return found


def read_directory(root: Path, cache: Mapping[str, Parsed] | None = None) -> DirectoryState:
    """Parse every file; a file whose stamp is unchanged in ``cache`` is not parsed again."""
    cache = cache or {}

    def parse(path: Path, rel: str, model: type[BaseModel]) -> Parsed:
        cached = cache.get(rel)
        if cached is not None and cached.stamp is not None and cached.stamp == stamp(path):
            return cached
        return parse_file(path, rel, model)

    if not root.is_dir():
        missing = ConfigIssue(str(root), "(directory)", "no such config directory")
        return DirectoryState(Parsed(None, None, (missing,)), {}, {})
    endpoints_path = root / ENDPOINTS_FILE
    if endpoints_path.exists():
        endpoints = parse(endpoints_path, ENDPOINTS_FILE, EndpointsFile)
    else:
        endpoints = Parsed(None, None, (ConfigIssue(ENDPOINTS_FILE, "(file)", "file not found"),))
    tenants: dict[str, Parsed] = {}
    files: dict[str, str] = {}
    for tenant_id, path in tenant_files(root).items():
        rel = f"{TENANTS_DIR}/{path.name}"
        files[tenant_id] = rel
        if not TENANT_ID.match(tenant_id):
            issue = ConfigIssue(rel, "(file)", f"invalid tenant id {tenant_id!r} in file name")
            tenants[tenant_id] = Parsed(stamp(path), None, (issue,))
        elif tenant_id in tenants:
            issue = ConfigIssue(rel, "(file)", f"tenant {tenant_id!r} is defined twice")
            tenants[tenant_id] = Parsed(stamp(path), None, (issue,))
        else:
            tenants[tenant_id] = parse(path, rel, Tenant)
    return DirectoryState(endpoints, tenants, files)


def cross_check(
    rel: str, tenant: Tenant, endpoints: Mapping[str, Endpoint]
) -> tuple[ConfigIssue, ...]:
    """Checks that need both files: the tenant's endpoint must exist."""
    if tenant.endpoint not in endpoints:
        known = ", ".join(sorted(endpoints)) or "none"
        return (
            ConfigIssue(rel, "endpoint", f"unknown endpoint {tenant.endpoint!r} (known: {known})"),
        )
    return ()


def load_directory(root: Path) -> tuple[dict[str, Endpoint], dict[str, Tenant], list[ConfigIssue]]:
    """Strict load (start-up, ``tenancy check``): valid parts and every issue found."""
    state = read_directory(root)
    issues = state.issues()
    endpoints: dict[str, Endpoint] = {}
    if isinstance(state.endpoints.value, EndpointsFile):
        endpoints = dict(state.endpoints.value.endpoints)
    tenants: dict[str, Tenant] = {}
    for tenant_id, parsed in state.tenants.items():
        if isinstance(parsed.value, Tenant):
            problems = (
                cross_check(state.files[tenant_id], parsed.value, endpoints) if endpoints else ()
            )
            issues.extend(problems)
            if not problems:
                tenants[tenant_id] = parsed.value
    return endpoints, tenants, issues
