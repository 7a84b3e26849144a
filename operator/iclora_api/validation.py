"""Turn a manifest or a product request into a validated spec, or a list of field errors.

Two input styles are accepted:
- a `MaskedICLoraTraining` manifest (apiVersion/kind/metadata/spec, camelCase);
- the hosted product's request JSON (snake_case keys at the top level).

Errors always name the camelCase path under `spec.`, whatever the input style,
and every error is reported at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from iclora_api.v1alpha1 import API_GROUP, API_VERSION, KIND, MaskedICLoraTrainingSpec


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class SpecInvalid(ValueError):
    """The spec breaks one or more rules; `errors` names every field."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


def _camelize_keys(value: Any) -> Any:
    """Rename snake_case keys to camelCase, recursively (request JSON -> spec)."""
    if isinstance(value, dict):
        return {to_camel(k) if isinstance(k, str) else k: _camelize_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camelize_keys(v) for v in value]
    return value


def _path(loc: tuple[int | str, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown field {str(err['loc'][-1])!r}"
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    # Custom validators surface as "Value error, <text>": keep only our text.
    return msg.removeprefix("Value error, ")


def _json_ready(value: Any) -> Any:
    """Map non-finite floats to the JSON parser's tokens so strict JSON validation sees them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def validate_spec(spec: Any) -> MaskedICLoraTrainingSpec:
    """Validate a camelCase spec mapping as the API server would see it (JSON, strict).

    Raises SpecInvalid with every error.
    """
    if not isinstance(spec, dict):
        raise SpecInvalid([FieldError("spec", "must be an object")])
    try:
        payload = json.dumps(_json_ready(spec), allow_nan=False, default=str)
    except (TypeError, ValueError) as exc:  # pragma: no cover - json.dumps(default=str) rarely fails
        raise SpecInvalid([FieldError("spec", f"not representable as JSON: {exc}")]) from exc
    try:
        return MaskedICLoraTrainingSpec.model_validate_json(payload)
    except ValidationError as exc:
        errors = [FieldError(_path(e["loc"]), _message(e)) for e in exc.errors()]
        raise SpecInvalid(errors) from None


def spec_from_document(doc: Any) -> Any:
    """Extract the camelCase spec mapping from a manifest or a snake_case request.

    Raises SpecInvalid when a manifest names the wrong kind or apiVersion.
    """
    if not isinstance(doc, dict):
        raise SpecInvalid([FieldError("spec", "document must be a mapping (object)")])
    if "kind" in doc or "apiVersion" in doc or "spec" in doc:
        errors = []
        if doc.get("kind") != KIND:
            errors.append(FieldError("kind", f"must be {KIND!r}, got {doc.get('kind')!r}"))
        expected = f"{API_GROUP}/{API_VERSION}"
        if doc.get("apiVersion") != expected:
            errors.append(FieldError("apiVersion", f"must be {expected!r}, got {doc.get('apiVersion')!r}"))
        if "spec" not in doc:
            errors.append(FieldError("spec", "required field is missing"))
        if errors:
            raise SpecInvalid(errors)
        return doc["spec"]
    # A product request: snake_case keys (camelCase accepted too).
    return _camelize_keys(doc)
