"""The committed CRD is exactly what the API model generates, and it is structural."""

from __future__ import annotations

import pytest
import yaml

from iclora_api.crdgen import crd_files, render_crd, render_crd_yaml, render_profile_crd
from tests.helpers import REPO_ROOT


def test_committed_crds_are_up_to_date():
    committed = {p.name: p.read_text() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    assert committed == crd_files(), "crds/ is stale: run `iclora crd --write crds`"


def test_iclora_crd_prints_the_committed_files(run_iclora):
    result = run_iclora("crd")
    assert result.returncode == 0
    assert result.stdout == render_crd_yaml()
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["spec"]["names"]["kind"] for d in docs] == ["MaskedICLoraTraining", "TrainingProfile"]


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("render", [render_crd, render_profile_crd])
def test_schema_is_structural(render):
    schema = render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for forbidden in ("$ref", "$defs", "anyOf", "title", "default", "const"):
            assert forbidden not in node, f"{forbidden} at {path}"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path


def test_crd_shape():
    crd = render_crd()
    spec = crd["spec"]
    assert spec["names"]["kind"] == "MaskedICLoraTraining"
    assert spec["names"]["shortNames"] == ["micl"]
    assert spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Step"] == ".status.progress.step"
    assert columns["Loss"] == ".status.progress.loss"
    assert columns["Units"] == ".status.billingUnits"
    assert columns["Age"] == ".metadata.creationTimestamp"
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec_schema["required"] == ["trainingDataUrl"]
    assert spec_schema["properties"]["rank"]["enum"] == [8, 16, 32, 64, 128]
    assert spec_schema["properties"]["validation"]["maxItems"] == 2
    assert spec_schema["properties"]["splitInputIntoScenes"]["x-kubernetes-validations"][0]["rule"] == "!self"
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_every_spec_field_but_suspend_is_immutable():
    spec_schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    transitions = [r for r in spec_schema["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    guarded = {r["fieldPath"].lstrip(".") for r in transitions}
    assert guarded == set(spec_schema["properties"]) - {"suspend"}
    # The one other spec-level rule: the reference downscale factor must divide the buckets.
    (other,) = [r for r in spec_schema["x-kubernetes-validations"] if r not in transitions]
    assert other["fieldPath"] == ".referenceDownscaleFactor"
