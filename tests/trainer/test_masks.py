"""Latent masks: any-pixel max-pooling, causal temporal groups, alignment with the video."""

from __future__ import annotations

import pytest
import torch

from iclora_trainer.masks import latent_mask

pytestmark = pytest.mark.trainer

# Named tiny dims: 17 pixel frames -> 3 latent frames (0 | 1-8 | 9-16), 64 px -> 2 cells.
FRAMES, SIZE = 17, 64


def _mask() -> torch.Tensor:
    return torch.zeros(1, FRAMES, SIZE, SIZE, dtype=torch.bool)


@pytest.mark.parametrize(
    ("y", "x", "cell"),
    [(0, 0, (0, 0)), (31, 31, (0, 0)), (32, 31, (1, 0)), (31, 32, (0, 1)), (63, 63, (1, 1))],
)
def test_single_white_pixel_marks_exactly_its_cell(y: int, x: int, cell: tuple[int, int]) -> None:
    m = _mask()
    m[0, 5, y, x] = True
    out = latent_mask(m)
    assert out.shape == (1, 3, 2, 2)
    expected = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    expected[0, 1, cell[0], cell[1]] = True
    assert torch.equal(out, expected)


@pytest.mark.parametrize(("frame", "latent_frame"), [(0, 0), (1, 1), (8, 1), (9, 2), (16, 2)])
def test_causal_temporal_groups(frame: int, latent_frame: int) -> None:
    m = _mask()
    m[0, frame, 40, 10] = True
    out = latent_mask(m)
    assert out[0, :, 1, 0].nonzero().flatten().tolist() == [latent_frame]
    assert int(out.sum()) == 1


def test_naive_strided_grouping_would_leak_frame_8_into_first_group() -> None:
    # Frame 8 belongs to latent frame 1 (frames 1..8), never to latent frame 0.
    m = _mask()
    m[0, 8] = True
    out = latent_mask(m)
    assert not out[0, 0].any() and out[0, 1].all() and not out[0, 2].any()


def test_rejects_geometry_off_the_latent_grid() -> None:
    with pytest.raises(ValueError):
        latent_mask(torch.zeros(1, 10, 64, 64, dtype=torch.bool))
    with pytest.raises(ValueError):
        latent_mask(torch.zeros(1, 9, 64, 48, dtype=torch.bool))


@pytest.mark.media
def test_prepared_mask_target_reference_stay_aligned(tmp_path, tiny_checkpoint) -> None:
    """Read back through the trainer: latent mask cells sit where the target differs from background."""
    from iclora_dev.synthetic_prepared import write_synthetic_prepared
    from iclora_trainer.data import precompute, read_prepared
    from iclora_trainer.model.loading import load_video_encoder
    from iclora_trainer.model.text import load_text_encoder

    root = write_synthetic_prepared(tmp_path / "ds", clips=2, width=96, height=64, frames=9)
    _, triplets = read_prepared(root)
    for t in triplets:
        assert t.reference.shape[:3] == t.target.shape[:3] == t.mask.shape
        # Inside the mask the target shows the reference; the mask is what the trainer reads.
        assert (t.target[t.mask] == t.reference[t.mask]).all()
    cpu = torch.device("cpu")
    enc = load_video_encoder(tiny_checkpoint.model_path, cpu, torch.float32)
    te = load_text_encoder(tiny_checkpoint.text_encoder_path, tiny_checkpoint.model_path, cpu, torch.float32)
    data = precompute(triplets, 24, enc, te, cpu, torch.float32)
    assert data.target.shape[2:] == data.reference.shape[2:] == data.mask.shape[1:] == (2, 2, 3)
    for i, t in enumerate(triplets):
        assert torch.equal(data.mask[i], latent_mask(torch.from_numpy(t.mask)[None])[0])
