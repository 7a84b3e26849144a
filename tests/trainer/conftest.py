"""Fixtures for the trainer tests: a tiny LTX checkpoint, small prepared datasets and validation media."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iclora_trainer.dataset.prepared import write_clip
from tests.helpers import FPS, FRAMES


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    from iclora_dev.tiny_model import create_tiny_checkpoint

    return create_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from iclora_dev.synthetic_prepared import write_synthetic_prepared

    return write_synthetic_prepared(
        tmp_path_factory.mktemp("prepared"), clips=4, width=64, height=64, frames=9
    )


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 96x64 source and reference (fitted to 64x64 by a centre crop) and a PNG mask."""
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (FRAMES, 64, 96, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (FRAMES, 64, 96, 3), dtype=np.uint8)
    write_clip(root / "source.mkv", source, FPS)
    write_clip(root / "reference.mkv", reference, FPS)
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[:, 48:] = 255  # right half (after crop: columns 32..63) regenerated
    Image.fromarray(mask).save(root / "mask.png")
    return {"video": root / "source.mkv", "mask": root / "mask.png", "reference": root / "reference.mkv"}
