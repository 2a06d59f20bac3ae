"""Config error wording a person can act on: the line a YAML error really is on, a close field
name for a typo, bounds stated with the value that broke them."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping, Sequence

import yaml
from pydantic import BaseModel

# pydantic error type -> (wording, ctx key of the limit)
BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("more than", "gt"),
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
}


def number(value: object) -> str:
    """``0`` rather than ``0.0``; anything else as YAML would show it."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """Every pydantic model an annotation can hold (through Optional, unions, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):  # X | None, list[X], dict[str, X], Annotated[...]
        found.extend(_models_in(arg))
    return found


def _has_mapping(annotation: object) -> bool:
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return True
    return any(_has_mapping(arg) for arg in typing.get_args(annotation))


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)
    return names


def did_you_mean(root: type[BaseModel], loc: Sequence[int | str]) -> str:
    """`` (did you mean `timeout_ms`?)`` for an unknown field at ``loc`` close to a known one of
    the same object; empty otherwise. Walks the models along ``loc``: list indexes, dict keys and
    union tags keep the models found so far."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    candidates = [root]
    keyed = False  # the last field was a mapping: the next part is a key a person chose
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = [m.model_fields[part] for m in candidates if part in m.model_fields]
        tagged = [m for m in candidates if m.__name__.lower().startswith(part.lower())]
        if fields:
            candidates = [found for f in fields for found in _models_in(f.annotation)]
            keyed = any(_has_mapping(f.annotation) for f in fields)
        elif tagged:
            candidates, keyed = tagged, False
        elif keyed:
            keyed = False
        else:
            return ""  # lost track of where this is: better no hint than a wrong one
        if not candidates:
            return ""
    known = set().union(*(_field_names(m) for m in candidates))
    close = difflib.get_close_matches(loc[-1], sorted(known), n=1, cutoff=0.75)
    return f" (did you mean `{close[0]}`?)" if close else ""


def yaml_location(text: str, exc: yaml.MarkedYAMLError) -> tuple[str, str]:
    """(``line N``, message) for a YAML syntax error.

    PyYAML often notices a break only at the next token: a mark at the start of a line (or the end
    of the file) belongs to the last line with content before it. The construct being parsed, when
    it started on another line, is named too (an unclosed quote or bracket).
    """
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if mark is None:
        return "line 1", problem
    line = mark.line
    if mark.column == 0 or mark.index >= len(text):
        before = text[: mark.index].rstrip()
        line = before.count("\n") if before else 0
    context = exc.context_mark
    if exc.problem and exc.context and context is not None and context.line != line:
        problem = f"{problem} ({exc.context} that starts on line {context.line + 1})"
    return f"line {line + 1}", problem
