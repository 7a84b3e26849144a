"""`iclora validate` through the installed console script, for both input styles."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO_ROOT


def test_recommended_manifest_is_valid(run_iclora):
    result = run_iclora("validate", str(REPO_ROOT / "examples/recommended.yaml"))
    assert result.returncode == 0, result.stderr
    out = result.json()
    assert out["valid"] is True
    assert out["errors"] == []
    assert out["spec"]["aspectRatio"] == "1:1"  # YAML 1.2: "1:1" is a string, not a base-60 number
    assert out["spec"]["validationResolution"] == "high"  # default applied


def test_request_json_is_valid_and_effective(run_iclora):
    result = run_iclora("validate", str(REPO_ROOT / "examples/request.json"))
    assert result.returncode == 0, result.stderr
    spec = result.json()["spec"]
    assert spec["trainingDataUrl"] == "https://example.com/v2v_masked_triplets.zip"
    assert spec["validation"][0]["referenceVideoUrl"] == "https://example.com/ref.mp4"
    assert spec["stgScale"] == 1.0


def test_effective_spec_snaps_frames(tmp_path, run_iclora):
    path = tmp_path / "req.json"
    path.write_text(json.dumps({"training_data_url": "s3://b/d.zip", "number_of_frames": 100,
                                "validation_number_of_frames": 90}))
    out = run_iclora("validate", str(path)).json()
    assert out["spec"]["numberOfFrames"] == 97
    assert out["spec"]["validationNumberOfFrames"] == 89


MANIFEST_BAD = """\
apiVersion: iclora.dev/v1alpha1
kind: MaskedICLoraTraining
metadata: {name: x}
spec:
  trainingDataUrl: ftp://example.com/d.zip
  rank: "32"
  rnak: 16
  numberOfFrames: 122
  learningRate: 2e-4
  validation:
    - videoUrl: https://e/x.mp4
      referenceVideoUrl: https://e/r.mp4
"""

REQUEST_BAD = {
    "training_data_url": "ftp://example.com/d.zip",
    "rank": "32",
    "rnak": 16,
    "number_of_frames": 122,
    "learning_rate": 2e-4,
    "validation": [{"video_url": "https://e/x.mp4", "reference_video_url": "https://e/r.mp4"}],
}

EXPECTED_FIELDS = {
    "spec.trainingDataUrl",
    "spec.rank",
    "spec.rnak",
    "spec.numberOfFrames",
    "spec.validation[0].maskUrl",
}


@pytest.mark.parametrize("style", ["manifest", "request"])
def test_invalid_input_lists_every_error_with_camel_case_paths(tmp_path, run_iclora, style):
    if style == "manifest":
        path = tmp_path / "bad.yaml"
        path.write_text(MANIFEST_BAD)
    else:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(REQUEST_BAD))
    result = run_iclora("validate", str(path))
    assert result.returncode == 2
    out = result.json()
    assert out["valid"] is False
    assert "spec" not in out
    assert {e["field"] for e in out["errors"]} == EXPECTED_FIELDS
    assert all(e["message"] for e in out["errors"])


def test_stdin_is_accepted(run_iclora):
    result = run_iclora("validate", "-", input=json.dumps({"training_data_url": "https://e/d.zip"}))
    assert result.returncode == 0
    assert result.json()["valid"] is True


@pytest.mark.parametrize(
    "content", ["{not json or yaml: [", "a: 1\n---\nb: 2\n", ""],
)
def test_unparseable_input_exits_1(tmp_path, run_iclora, content):
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    result = run_iclora("validate", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "broken.yaml" in result.stderr


def test_missing_file_exits_1(run_iclora, tmp_path):
    result = run_iclora("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "nope.yaml" in result.stderr


def test_wrong_kind_is_invalid(tmp_path, run_iclora):
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nspec: {}\n")
    result = run_iclora("validate", str(path))
    assert result.returncode == 2
    assert {e["field"] for e in result.json()["errors"]} == {"kind", "apiVersion"}
