"""TrainingProfile: admin volumes (Kubernetes' shapes) and the base model's sources (issue 21)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from iclora_api.crdgen import render_profile_crd
from iclora_api.profile import MODEL_CACHE_MOUNT_PATH, VOLUME_SOURCES, profile_spec_from_object

S3_MODEL = {"checkpoint": "s3://models/ltx-2.3/ltx-2.3-22b.safetensors", "textEncoder": "s3://models/gemma/"}
CACHE = {"name": "model-cache", "hostPath": {"path": "/var/cache/iclora-models", "type": "DirectoryOrCreate"}}


def _profile(**spec):
    return profile_spec_from_object({"spec": spec})


def test_a_profile_names_its_model_by_uri_and_its_cache_volume():
    p = _profile(model={**S3_MODEL, "cacheVolume": "model-cache"}, volumes=[CACHE])
    assert p.model_uris() == (S3_MODEL["checkpoint"], S3_MODEL["textEncoder"])
    assert p.cache_volume.name == "model-cache"
    assert p.model.fetches_from_s3


def test_the_deprecated_paths_still_work_and_mix_with_nothing():
    assert _profile(modelPath="/w/ltx.safetensors").model_uris() == ("/w/ltx.safetensors", "/models/gemma")
    with pytest.raises(ValidationError, match="not both"):
        _profile(model=S3_MODEL, modelPath="/w/ltx.safetensors")


@pytest.mark.parametrize("uri", ["ftp://host/x", "s3://bucket-only", "/plain/path", "file://relative", "s3:// /k"])
def test_model_uris_must_be_s3_file_or_https(uri):
    with pytest.raises(ValidationError):
        _profile(model={**S3_MODEL, "checkpoint": uri})


@pytest.mark.parametrize(("spec", "error"), [
    ({"volumes": [{"name": "a"}]}, "exactly one source"),
    ({"volumes": [{"name": "a", "hostPath": {"path": "/x"}, "nfs": {"server": "s", "path": "/"}}]},
     "exactly one source"),
    ({"volumes": [{"name": "a", "hostPath": {"path": "/x"}}, {"name": "a", "hostPath": {"path": "/y"}}]}, "unique"),
    ({"volumes": [{"name": "scratch", "emptyDir": {}}]}, "operator's own"),
    ({"volumeMounts": [{"name": "x", "mountPath": "/m"}]}, "names no entry"),
    ({"volumes": [CACHE], "volumeMounts": [{"name": "model-cache", "mountPath": "/scratch/m"}]}, "overlaps"),
    ({"volumes": [CACHE], "volumeMounts": [{"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT_PATH}]},
     "overlaps"),
    ({"model": {**S3_MODEL, "cacheVolume": "nope"}, "volumes": [CACHE]}, "cacheVolume"),
    ({"volumes": [{"name": "a", "hostPath": {"path": "/x", "type": "Folder"}}]}, "type"),
    ({"volumes": [{"name": "a", "persistentVolumeClaim": {}}]}, "claimName"),
    ({"volumes": [{"name": "a", "hostPath": {"path": "/x", "readOnly": True}}]}, "readOnly"),
])
def test_volume_mistakes_are_refused(spec, error):
    with pytest.raises(ValidationError, match=error):
        _profile(**spec)


def test_every_kubernetes_volume_source_is_accepted():
    from kubernetes.client import V1Volume

    assert set(VOLUME_SOURCES) == set(V1Volume.attribute_map.values()) - {"name"}
    p = _profile(volumes=[{"name": "cfg", "configMap": {"name": "x", "items": [{"key": "a", "path": "b"}]}},
                          {"name": "img", "image": {"reference": "registry.example.com/ltx:2.3",
                                                    "pullPolicy": "IfNotPresent"}}],
                 volumeMounts=[{"name": "img", "mountPath": "/models", "readOnly": True}])
    assert p.volumes[0].manifest() == {"name": "cfg", "configMap": {"name": "x", "items": [{"key": "a", "path": "b"}]}}


def test_the_crd_checks_volumes_and_their_references():
    spec = render_profile_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    volume = spec["properties"]["volumes"]["items"]
    assert volume["required"] == ["name"]
    assert volume["properties"]["hostPath"]["required"] == ["path"]
    assert volume["properties"]["persistentVolumeClaim"]["required"] == ["claimName"]
    assert volume["properties"]["secret"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert "== 1" in volume["x-kubernetes-validations"][0]["rule"]
    mount = spec["properties"]["volumeMounts"]["items"]
    assert set(mount["required"]) == {"name", "mountPath"}
    rules = " ".join(r["rule"] for r in spec["x-kubernetes-validations"])
    assert "self.volumeMounts.all" in rules and "self.model.cacheVolume" in rules
