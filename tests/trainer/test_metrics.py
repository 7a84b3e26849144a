"""A run leaves its loss curve: metrics.jsonl (per-step loss and LR) and loss.png; a resumed run continues it."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from iclora_trainer.storage import LocalStore
from tests.helpers import SINGLE, make_plan, make_settings

pytestmark = pytest.mark.trainer


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_metrics_and_loss_plot_and_a_resume_continues_them(tmp_path, tiny_checkpoint, prepared_dataset):
    from iclora_trainer.loop import train

    store = LocalStore(tmp_path / "out")
    settings = make_settings(tiny_checkpoint, tmp_path / "work", checkpoint_interval=2, warmup_steps=2)
    # First attempt stops after step 3 (checkpoint at 2), the second resumes from 2 and finishes.
    first = train(make_plan(steps=5), settings, prepared_dataset, store, SINGLE, stop_after=3)
    assert [r["step"] for r in _rows(tmp_path / "out" / "metrics.jsonl")] == [1, 2, 3]
    outcome = train(make_plan(steps=5), settings, prepared_dataset, store, SINGLE)
    assert outcome.result.status == "Succeeded" and outcome.start_step == 2

    artifacts = outcome.result.artifacts
    assert artifacts.metrics_file.endswith("artifacts/metrics.jsonl")
    assert artifacts.loss_plot.endswith("artifacts/loss.png")
    rows = _rows(tmp_path / "out" / "artifacts" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # step 3 of the first attempt replaced
    assert rows[:2] == _rows(tmp_path / "out" / "metrics.jsonl")[:2]
    assert rows[2]["loss"] == pytest.approx(outcome.losses[0])
    assert rows[0]["lr"] < rows[1]["lr"]  # warm-up, then the schedule
    assert rows[0]["lr"] == pytest.approx(2e-3 / 2) and first.losses[:2] == [r["loss"] for r in rows[:2]]
    with Image.open(tmp_path / "out" / "artifacts" / "loss.png") as png:
        assert png.format == "PNG" and png.size == (800, 450)
        assert len(png.convert("RGB").getcolors(1 << 16) or []) > 10  # a drawn plot, not a blank image
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["artifacts"]["lossPlot"] == artifacts.loss_plot


def test_local_store_lists_and_deletes_by_key_prefix_like_s3(tmp_path):
    store = LocalStore(tmp_path / "run")
    assert store.list("") == [] and store.list("result.json") == []  # nothing written yet, no folder
    for key in ("result.json", "metrics.jsonl", "checkpoints/step-000002/COMPLETE", "checkpoints/x"):
        store.put_bytes(b"{}", key)
    assert store.list("metrics.jsonl") == ["metrics.jsonl"]
    assert store.list("checkpoints") == ["checkpoints/step-000002/COMPLETE", "checkpoints/x"]
    store.delete_prefix("result.json")
    assert "result.json" not in store.list("") and "metrics.jsonl" in store.list("")
    store.delete_prefix("checkpoints/")
    assert store.list("") == ["metrics.jsonl"]


def test_a_new_attempt_removes_the_last_attempts_result(tmp_path, tiny_checkpoint, prepared_dataset):
    """The operator reads result.json when the Job is gone: an old failure must not stand for a
    later attempt that is still running."""
    from iclora_trainer.loop import train

    store = LocalStore(tmp_path / "out")
    store.put_bytes(b'{"status": "Failed", "reason": "StoreUnavailable"}', "result.json")
    settings = make_settings(tiny_checkpoint, tmp_path / "work", checkpoint_interval=100)
    train(make_plan(steps=3), settings, prepared_dataset, store, SINGLE, stop_after=1)
    assert not (tmp_path / "out" / "result.json").exists()
