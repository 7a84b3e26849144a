"""`iclora dataset check|preflight` through the installed console script."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iclora_dev.synthetic import write_dataset_zip
from tests.helpers import image, solid_frames, video, write_zip

pytestmark = pytest.mark.media


@pytest.fixture(scope="module")
def good_zip(tmp_path_factory):
    return write_dataset_zip(tmp_path_factory.mktemp("z") / "good.zip", triplets=3, frames=12, width=96, height=64)


def test_check_accepts_a_good_dataset(run_iclora, good_zip):
    result = run_iclora("dataset", "check", str(good_zip), "--number-of-frames", "9", "--resolution", "low",
                        "--aspect-ratio", "16:9")
    assert result.returncode == 0, result.stderr
    out = result.json()
    assert out == {"ok": True, "usable": 3, "errors": [], "ignored": [], "warnings": [],
                   "triplets": [{"name": f"sample0{i}", "status": "usable", "reason": ""} for i in (1, 2, 3)]}


def test_check_rejects_short_clips_unless_auto_scaled(run_iclora, good_zip):
    result = run_iclora("dataset", "check", str(good_zip), "--resolution", "low")  # 89 frames by default
    assert result.returncode == 2
    out = result.json()
    assert out["ok"] is False and out["usable"] == 0
    assert all(t["status"] == "skipped" and "89" in t["reason"] for t in out["triplets"])
    result = run_iclora("dataset", "check", str(good_zip), "--resolution", "low", "--number-of-frames", "17",
                        "--auto-scale-input")
    assert result.returncode == 0 and result.json()["usable"] == 3


def test_check_reports_errors_and_ignored_files(run_iclora, tmp_path):
    clip = video(solid_frames(12, 32, 32))
    z = write_zip(tmp_path / "d.zip", {"a_start.mp4": clip, "a_end.mp4": clip,
                                       "a_mask.png": image(np.full((32, 32), 255, np.uint8)),
                                       "b_end.mp4": clip, "__MACOSX/._a_end.mp4": b"x", "readme.md": b"hi"})
    result = run_iclora("dataset", "check", str(z), "--number-of-frames", "9")
    assert result.returncode == 2
    out = result.json()
    assert out["errors"][0]["name"] == "b" and "incomplete triplet" in out["errors"][0]["message"]
    assert out["ignored"] == ["__MACOSX/._a_end.mp4", "readme.md"]
    # A file used by no triplet is named with the reason; macOS metadata is only listed.
    assert [w["name"] for w in out["warnings"]] == ["readme.md"]
    assert "not part of a triplet" in out["warnings"][0]["message"]


def test_check_exit_codes_for_bad_archives_and_usage(run_iclora, tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    result = run_iclora("dataset", "check", str(tmp_path / "bad.zip"))
    assert result.returncode == 2
    assert "not a zip archive" in result.json()["errors"][0]["message"]
    assert run_iclora("dataset", "check", str(tmp_path / "missing.zip")).returncode == 1
    assert run_iclora("dataset", "check", str(tmp_path / "bad.zip"), "--number-of-frames", "500").returncode == 1
    assert run_iclora("dataset", "check", str(tmp_path / "bad.zip"), "--resolution", "huge").returncode != 0


def test_preflight_from_s3_writes_the_prepared_dataset(run_iclora, good_zip, s3_store, tmp_path):
    s3_store.client().fput_object(s3_store.bucket, "datasets/good.zip", str(good_zip))
    spec = {"training_data_url": f"s3://{s3_store.bucket}/datasets/good.zip", "number_of_frames": 9,
            "resolution": "low", "aspect_ratio": "16:9", "trigger_phrase": "repl4ce", "debug_dataset": True}
    env = {"ICLORA_SPEC": json.dumps(spec), "ICLORA_ALLOW_PRIVATE_NETWORKS": "1",
           "ICLORA_DATASET_AWS_ACCESS_KEY_ID": s3_store.access_key,
           "ICLORA_DATASET_AWS_SECRET_ACCESS_KEY": s3_store.secret_key,
           "ICLORA_DATASET_AWS_ENDPOINT_URL": s3_store.endpoint}
    out = tmp_path / "run"
    term = tmp_path / "termination-log"
    result = run_iclora("dataset", "preflight", "--spec", "env:ICLORA_SPEC", "--output", str(out),
                        "--termination-log", str(term), "--work-dir", str(tmp_path / "w"), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "preflight.json").read_text())
    assert report["ok"] is True and report["usable"] == 3
    manifest = json.loads((out / "prepared" / "manifest.json").read_text())
    assert (manifest["width"], manifest["height"], manifest["number_of_frames"]) == (512, 288, 9)
    assert (out / "artifacts" / "debug-dataset.zip").stat().st_size > 0
    assert json.loads(term.read_text())["ok"] is True


def test_preflight_failures_exit_with_their_code_and_report(run_iclora, good_zip, tmp_path):
    spec = {"training_data_url": "https://example.invalid/x.zip", "resolution": "low"}
    out = tmp_path / "run"
    term = tmp_path / "termination-log"
    # 89 frames needed, 12 given: nothing usable.
    result = run_iclora("dataset", "preflight", "--spec", "-", "--dataset", str(good_zip), "--output", str(out),
                        "--termination-log", str(term), "--work-dir", str(tmp_path / "w"),
                        input=json.dumps(spec))
    assert result.returncode == 13
    report = json.loads((out / "preflight.json").read_text())
    assert report["ok"] is False and report["reason"] == "NoUsableClips"
    assert "sample01" in report["message"]
    assert json.loads(term.read_text())["reason"] == "NoUsableClips"
    # A download failure: the host does not resolve.
    result = run_iclora("dataset", "preflight", "--spec", "-", "--output", str(out), "--termination-log", str(term),
                        "--work-dir", str(tmp_path / "w2"), input=json.dumps(spec))
    assert result.returncode == 11
    assert json.loads(term.read_text())["reason"] == "DatasetDownloadFailed"
    # An invalid spec.
    result = run_iclora("dataset", "preflight", "--spec", "-", "--output", str(out), "--termination-log", str(term),
                        input=json.dumps({**spec, "rank": 3}))
    assert result.returncode == 10
