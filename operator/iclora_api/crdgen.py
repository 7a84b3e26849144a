"""Render the CustomResourceDefinition from the pydantic API model.

Kubernetes wants a *structural* OpenAPI v3 schema: no `$ref`, no `anyOf` with
null, boolean `exclusiveMinimum`, no `title`. Defaults are deliberately left
out of the CRD: the API server would write them into stored objects, and the
spec must stay exactly as the user (or Git) wrote it. The operator applies
defaults with the same model and reports effective values in status.
"""

from __future__ import annotations

import copy
from typing import Any

from iclora_api.geometry import SPATIAL_FACTOR, AspectRatio, Resolution, bucket_size
from iclora_api.profile import (
    PROFILE_KIND,
    PROFILE_PLURAL,
    PROFILE_SHORT_NAME,
    PROFILE_SINGULAR,
    TrainingProfileSpec,
)
from iclora_api.v1alpha1 import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    MaskedICLoraTrainingSpec,
    MaskedICLoraTrainingStatus,
    downscale_fits,
)

# Keys of pydantic's JSON Schema that a CRD schema does not allow or need.
_DROPPED_KEYS = {"title", "default", "$defs", "additionalProperties"}

IMMUTABLE_EXCEPT = {"suspend"}
CATEGORIES = ["iclora"]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(branches) == 1:
            # Optional[X]: the field is simply not required; nulls are pruned by the server.
            return _resolve({**branches[0], **rest}, defs)
        node = {**rest, "anyOf": branches}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
            continue
        if key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
            continue
        if key == "properties":
            out[key] = {name: _resolve(prop, defs) for name, prop in value.items()}
            continue
        out[key] = _resolve(value, defs)
    if out.get("type") == "object" and "properties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def structural_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _resolve(raw, defs)


def _immutability_rules(spec_schema: dict[str, Any]) -> list[dict[str, str]]:
    """One transition rule per field: present/absent and value must not change after creation."""
    rules = []
    for name in spec_schema["properties"]:
        if name in IMMUTABLE_EXCEPT:
            continue
        rules.append(
            {
                "rule": (
                    f"has(self.{name}) == has(oldSelf.{name}) && "
                    f"(!has(self.{name}) || self.{name} == oldSelf.{name})"
                ),
                "message": f"spec.{name} is immutable after creation (only spec.suspend may change)",
                "fieldPath": f".{name}",
                "reason": "FieldValueForbidden",
            }
        )
    return rules


def _document_defaults(schema: dict[str, Any]) -> None:
    """Say each default in its description, since the CRD itself carries no defaults."""
    for name, field in MaskedICLoraTrainingSpec.model_fields.items():
        if field.is_required():
            continue
        default = field.get_default(call_default_factory=True)
        if default is None or default == [] or name == "validation_negative_prompt":
            continue
        prop = schema["properties"][field.alias or name]
        shown = default.value if hasattr(default, "value") else default
        shown = str(shown).lower() if isinstance(shown, bool) else shown
        text = prop.get("description", "").rstrip()
        prop["description"] = f"{text} Default: {shown}.".strip()


def _field_or_default(name: str) -> str:
    """CEL for a spec field's value with the model's default (the CRD stores no defaults)."""
    field = MaskedICLoraTrainingSpec.model_fields[name]
    alias = field.alias or name
    return f"(has(self.{alias}) ? self.{alias} : '{field.get_default().value}')"


def _downscale_rule() -> dict[str, str]:
    """referenceDownscaleFactor 2 only with buckets it divides (generated from the bucket table)."""
    factors = [f for f in MaskedICLoraTrainingSpec.model_fields["reference_downscale_factor"].annotation.__args__
               if f > 1]
    clauses = []
    has_validation = "has(self.validation) && size(self.validation) > 0 && "
    for factor in factors:
        for res_field, ar_field, guard in (
            ("resolution", "aspect_ratio", ""),
            ("validation_resolution", "validation_aspect_ratio", has_validation),
        ):
            bad = [
                f"({_field_or_default(res_field)} == '{r.value}' && {_field_or_default(ar_field)} == '{a.value}')"
                for r in Resolution
                for a in AspectRatio
                if not downscale_fits(bucket_size(r, a), factor)
            ]
            if bad:
                clauses.append(
                    f"!(has(self.referenceDownscaleFactor) && self.referenceDownscaleFactor == {factor} && "
                    f"{guard}({' || '.join(bad)}))"
                )
    sides = " or ".join(str(SPATIAL_FACTOR * f) for f in factors)
    return {
        "rule": " && ".join(clauses),
        "message": f"referenceDownscaleFactor {'/'.join(map(str, factors))} needs bucket sides that are multiples "
        f"of {sides} px: use factor 1, or a square or medium bucket (training and validation)",
        "fieldPath": ".referenceDownscaleFactor",
    }


def spec_schema() -> dict[str, Any]:
    schema = structural_schema(MaskedICLoraTrainingSpec)
    _document_defaults(schema)
    schema["x-kubernetes-validations"] = [*_immutability_rules(schema), _downscale_rule()]
    return schema


def status_schema() -> dict[str, Any]:
    return structural_schema(MaskedICLoraTrainingStatus)


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.progress.totalSteps", "priority": 1},
    {"name": "Loss", "type": "string", "jsonPath": ".status.progress.loss"},
    {"name": "Units", "type": "integer", "jsonPath": ".status.billingUnits"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.failure.reason", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_name: str,
    scope: str,
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any] | None,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": spec,
    }
    version: dict[str, Any] = {"name": API_VERSION, "served": True, "storage": True}
    if status is not None:
        properties["status"] = status
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {
        "openAPIV3Schema": {
            "type": "object",
            "description": description,
            "required": ["spec"],
            "properties": properties,
        }
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "masked-iclora", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": [short_name],
                "categories": CATEGORIES,
            },
            "versions": [version],
        },
    }


def render_crd() -> dict[str, Any]:
    """The MaskedICLoraTraining CRD."""
    return _crd(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_name=SHORT_NAME,
        scope="Namespaced",
        description=(
            "Trains a masked video-to-video IC-LoRA for LTX-2.3 from a dataset of "
            "reference/target/mask triplets."
        ),
        spec=spec_schema(),
        status=status_schema(),
        columns=PRINTER_COLUMNS,
    )


PROFILE_COLUMNS = [
    {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpusPerNode"},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.nodes"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def render_profile_crd() -> dict[str, Any]:
    """The cluster-scoped TrainingProfile CRD."""
    return _crd(
        kind=PROFILE_KIND,
        plural=PROFILE_PLURAL,
        singular=PROFILE_SINGULAR,
        short_name=PROFILE_SHORT_NAME,
        scope="Cluster",
        description="Where and how MaskedICLoraTrainings run; set by the cluster admin.",
        spec=structural_schema(TrainingProfileSpec),
        status=None,
        columns=PROFILE_COLUMNS,
    )


HEADER = "# Generated by `iclora crd` from iclora_api/v1alpha1.py. Do not edit.\n"


def crd_files() -> dict[str, str]:
    """File name -> YAML text of every CRD of the product (the content of crds/)."""
    import yaml  # PyYAML: only the CRD writer needs it; the contract itself needs pydantic only

    out = {}
    for crd in (render_crd(), render_profile_crd()):
        name = f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"
        out[name] = HEADER + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)
    return out


def render_crd_yaml() -> str:
    """Every CRD as one multi-document YAML stream (what `iclora crd` prints)."""
    return "---\n".join(crd_files().values())
