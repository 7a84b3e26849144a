"""Kept tokens mean the same in training and generation: they carry only kept pixels.

With a VAE whose receptive field crosses a 32-px cell (as the real one's does), a kept cell next
to the mask encoded from the whole target would carry target pixels from inside the mask, which
at generation time come from a source showing something else. The kept-region conditioning is
encoded with the masked pixels neutralised, in training (`data.encode_from_files`) and in the
preview and `iclora generate` (`validation.prepare_entry`): both through `data.encode_video`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iclora_trainer.data import encode_video
from iclora_trainer.masks import latent_mask

pytestmark = pytest.mark.trainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def wide_encoder(tmp_path_factory):
    from iclora_dev.tiny_model import create_tiny_checkpoint
    from iclora_trainer.model.loading import load_video_encoder

    ck = create_tiny_checkpoint(tmp_path_factory.mktemp("wide-vae"), cell_local=False)
    return load_video_encoder(ck.model_path, CPU, torch.float32)


def _clip_and_mask(seed: int = 0):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 256, (9, 64, 96, 3), dtype=np.uint8)
    mask = np.zeros((9, 64, 96), dtype=bool)
    mask[:, 16:48, 32:64] = True  # one 32-px cell of the middle column, every frame
    return target, mask


def test_changing_pixels_inside_the_mask_leaves_every_kept_token_latent_bit_identical(wide_encoder):
    target, mask = _clip_and_mask()
    other = target.copy()
    other[mask] = np.random.default_rng(1).integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
    kept_cells = ~latent_mask(torch.from_numpy(mask)[None])[0]  # (F', H', W')
    assert kept_cells.any() and (~kept_cells).any()

    a = encode_video(wide_encoder, target, CPU, torch.float32, neutral=mask)
    b = encode_video(wide_encoder, other, CPU, torch.float32, neutral=mask)
    assert torch.equal(a, b)  # every cell, kept ones included: bit-identical

    # The test has teeth: encoded whole, the kept cells next to the mask see inside it.
    whole_a = encode_video(wide_encoder, target, CPU, torch.float32)
    whole_b = encode_video(wide_encoder, other, CPU, torch.float32)
    assert not torch.equal(whole_a[:, kept_cells], whole_b[:, kept_cells])


def test_training_and_generation_encode_the_kept_region_the_same_way(wide_encoder, tmp_path, monkeypatch):
    """The precompute's `kept` latent and the preview's `kept_latent` of the same clip and mask agree."""
    from iclora_trainer.data import PixelTriplet, encode_triplet
    from iclora_trainer.validation import ValidationPlan, prepare_entry

    target, mask = _clip_and_mask(2)
    reference = np.random.default_rng(3).integers(0, 256, target.shape, dtype=np.uint8)
    encoded = encode_triplet(PixelTriplet("t", reference, target, mask, "c"), wide_encoder, CPU, torch.float32)

    class _Text:
        def encode(self, prompt):
            from types import SimpleNamespace

            return SimpleNamespace(context=torch.zeros(4, 8), mask=torch.ones(4))

    from iclora_trainer import validation_media

    plan = ValidationPlan((), "n", 9, 24.0, 96, 64, 1.0)
    fitted = {"s": target, "m": mask, "r": reference}
    monkeypatch.setattr(validation_media, "load_fitted",
                        lambda path, *a, mask=False: fitted["m" if mask else path.name])
    entry = prepare_entry((tmp_path / "s", tmp_path / "m", tmp_path / "r"), "p", "n", plan, wide_encoder, _Text(),
                          CPU, torch.float32)
    assert torch.equal(entry.kept_latent, encoded.kept)
    assert torch.equal(entry.source_latent, encoded.target)
