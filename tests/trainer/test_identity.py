"""A LoRA says which base checkpoint it was trained on: file name and a content fingerprint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from iclora_trainer.model import identity
from iclora_trainer.model.identity import checkpoint_identity


def _checkpoint(path, seed: int, n: int = 4, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    save_file({f"w{i}": torch.randn(size, size, generator=g) for i in range(n)}, str(path), {"config": "{}"})
    return path


@pytest.mark.parametrize("sampled", [False, True], ids=["whole-file", "sampled"])
def test_same_layout_other_weights_give_another_fingerprint(tmp_path, monkeypatch, sampled):
    if sampled:  # the 40 GB path: header + sampled blocks, exercised on small files
        monkeypatch.setattr(identity, "_WHOLE_FILE_LIMIT", 1024)
        monkeypatch.setattr(identity, "_BLOCK", 256)
    (tmp_path / "copy").mkdir()
    a = checkpoint_identity(_checkpoint(tmp_path / "dev.safetensors", 0))
    a_again = checkpoint_identity(_checkpoint(tmp_path / "copy" / "dev.safetensors", 0))
    b = checkpoint_identity(_checkpoint(tmp_path / "distilled.safetensors", 1))
    assert a.file == "dev.safetensors" and b.file == "distilled.safetensors"
    assert a.fingerprint == a_again.fingerprint
    assert a.fingerprint != b.fingerprint
    assert len(a.fingerprint) == 64


def test_a_file_that_is_not_safetensors_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "_WHOLE_FILE_LIMIT", 8)
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        checkpoint_identity(bad)
