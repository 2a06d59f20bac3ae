"""Dynamic selection: the model comes from a field of the caller's (parsed) input."""

from __future__ import annotations

import orjson

from router.errors import InvalidRequest
from router.processing.interface import Json
from tenancy.processing import SelectModel

_MISSING = object()


def _key(value: object) -> str | None:
    """A field value as the key it is matched against (strings as they are, numbers as in JSON)."""
    if value is _MISSING or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return orjson.dumps(value).decode()
    return None


class ModelSelector:
    def __init__(self, config: SelectModel) -> None:
        self.field = config.field
        self.path = tuple(config.field.split("."))
        self.models = dict(config.models)
        self.default = config.default

    def _lookup(self, record: Json) -> object:
        value: object = record
        for part in self.path:
            if not isinstance(value, dict):
                return _MISSING
            value = value.get(part, _MISSING)
        return value

    def choose(self, payload: Json) -> str:
        """The model for this input; InvalidRequest when none fits and there is no default."""
        if isinstance(payload, list) and payload:
            keys = {_key(self._lookup(record)) for record in payload}
            if len(keys) > 1:
                raise InvalidRequest(
                    f"the records name different {self.field!r} values: one model per request"
                )
            key = keys.pop()
        else:
            key = _key(self._lookup(payload))
        model = self.models.get(key) if key is not None else None
        if model is not None:
            return model
        if self.default is not None:
            return self.default
        if key is None:
            raise InvalidRequest(f"the input has no {self.field!r} to choose a model by")
        known = ", ".join(sorted(self.models))
        raise InvalidRequest(f"no model for {self.field}={key!r} (known: {known})")
