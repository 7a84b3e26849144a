"""Issue 23: host memory and scratch disk of the dataset in a pod of several local ranks.

- precompute streams: at most one clip's pixels are alive at once, whatever the dataset's size;
- the prepared dataset is downloaded once per pod (one local rank, the others wait on its lock);
- the local ranks split the VAE encoding through the pod's scratch and all read the same latents;
- the store or the scratch disk failing is infrastructure (exit 20 / 22), never DatasetInvalid.
"""

from __future__ import annotations

import errno
import multiprocessing
import tracemalloc
import weakref
from pathlib import Path

import pytest
import torch

from iclora_api.contract import ExitCode, Stage
from iclora_dev.synthetic_prepared import write_synthetic_prepared
from iclora_trainer import data as data_module
from iclora_trainer.errors import ObjectStoreError, ScratchError, failure
from iclora_trainer.storage import DATASET_MARKER, LocalStore, S3Store, download_tree
from tests.helpers import make_settings

pytestmark = pytest.mark.trainer

CPU = torch.device("cpu")


class CountingStore(LocalStore):
    """A local folder standing in for the run's s3:// prefix; every download appends to a log file."""

    def __init__(self, root: Path, log: Path, delay: float = 0.0) -> None:
        super().__init__(root)
        self.log, self.delay = log, delay

    def list(self, prefix: str) -> list[str]:
        return [k for k in super().list(prefix) if not k.endswith(DATASET_MARKER)]

    def get_file(self, key: str, local: Path) -> None:
        import time

        time.sleep(self.delay)
        with open(self.log, "a") as f:
            f.write(key + "\n")
        super().get_file(key, local)


# --- streaming: one clip alive at most -----------------------------------------------------------


def _instrument(monkeypatch) -> dict[str, int]:
    """Count the RGB clips `data._decode` returns that are alive at once (the triplet's pixel
    mask, a third of a clip's bytes, is kept while its target is encoded whole and neutralised)."""
    state = {"alive": 0, "peak": 0, "decoded": 0}
    original = data_module._decode

    def gone() -> None:
        state["alive"] -= 1

    def decode(*args, **kwargs):
        array = original(*args, **kwargs)
        state["decoded"] += 1
        if array.ndim == 4:  # (F, H, W, 3) video; masks are (F, H, W) bool
            state["alive"] += 1
            state["peak"] = max(state["peak"], state["alive"])
            weakref.finalize(array, gone)
        return array

    monkeypatch.setattr(data_module, "_decode", decode)
    return state


def _precompute(root: Path, tiny, cache: Path | None = None):
    from iclora_trainer.model.loading import load_video_encoder
    from iclora_trainer.model.text import load_text_encoder

    return data_module.precompute_dir(
        root, 24, lambda: load_video_encoder(tiny.model_path, CPU, torch.float32),
        lambda: load_text_encoder(tiny.text_encoder_path, tiny.model_path, CPU, torch.float32),
        CPU, torch.float32, cache=cache)


def test_precompute_holds_one_clip_at_a_time(tmp_path, tiny_checkpoint, monkeypatch):
    root = write_synthetic_prepared(tmp_path / "ds", clips=6, width=64, height=64, frames=17)
    state = _instrument(monkeypatch)
    data = _precompute(root, tiny_checkpoint, tmp_path / "latents")
    assert len(data) == 6 and state["decoded"] == 18  # 6 x (mask, reference, target)
    assert state["peak"] == 1 and state["alive"] == 0


def test_precompute_peak_host_memory_does_not_grow_with_the_dataset(tmp_path, tiny_checkpoint):
    """tracemalloc sees numpy's pixel buffers: the peak is one clip's, for 2 triplets as for 8."""
    clip = 17 * 64 * 64 * 3  # bytes of one decoded clip
    peaks = {}
    for n in (2, 8):
        root = write_synthetic_prepared(tmp_path / f"ds{n}", clips=n, width=64, height=64, frames=17)
        _precompute(root, tiny_checkpoint, tmp_path / f"warm{n}")  # imports and lazy caches out of the way
        tracemalloc.start()
        _precompute(root, tiny_checkpoint)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[8] - peaks[2] < clip, peaks
    # The measurement has teeth: reading every triplet at once (the old path) grows by 3 clips each.
    tracemalloc.start()
    _, triplets = data_module.read_prepared(tmp_path / "ds8")
    everything = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del triplets
    assert everything > 8 * 2 * clip > peaks[8], (everything, peaks)


def test_a_clip_of_the_wrong_geometry_is_refused(tmp_path):
    import json

    from iclora_trainer.errors import DatasetError

    root = write_synthetic_prepared(tmp_path / "ds", clips=1, width=64, height=64, frames=9)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["number_of_frames"] = 17
    (root / "manifest.json").write_text(json.dumps(manifest))
    m = data_module.read_manifest(root)
    with pytest.raises(DatasetError, match=r"reference is \(9, 64, 64\), expected \(17, 64, 64\)"):
        data_module.load_triplet(root, m, m.triplets[0])


# --- two local ranks, one pod folder -------------------------------------------------------------


def _rank(local_rank: int, source: str, pod: str, model: str, text: str, out: str) -> None:
    """What `iclora train` does in one local rank, up to the precomputed dataset (a spawned process)."""
    from iclora_api.trainer_settings import TrainerSettings
    from iclora_trainer import data
    from iclora_trainer.loop import load_and_precompute

    encoded = []
    original = data.encode_from_files

    def counted(root, manifest, entry, *args, **kwargs):
        encoded.append(entry.name)
        return original(root, manifest, entry, *args, **kwargs)

    data.encode_from_files = counted
    store = CountingStore(Path(source), Path(pod) / "downloads.log", delay=0.05)
    dataset = download_tree(store, Path(pod) / "dataset")
    settings = TrainerSettings.model_validate({
        "model_path": model, "text_encoder_path": text, "device": "cpu", "dtype": "fp32",
        "work_dir": str(Path(pod) / f"rank{local_rank}")})
    precomputed, _ = load_and_precompute(dataset, settings, CPU, torch.float32, shared_dir=Path(pod))
    torch.save({"target": precomputed.target, "reference": precomputed.reference, "mask": precomputed.mask,
                "context": precomputed.context, "encoded": encoded, "names": precomputed.names}, out)


def test_two_local_ranks_download_once_and_share_the_latents(tmp_path, tiny_checkpoint, prepared_dataset):
    pod = tmp_path / "pod"
    pod.mkdir()
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    procs = [ctx.Process(target=_rank, args=(r, str(prepared_dataset), str(pod), str(tiny_checkpoint.model_path),
                                             str(tiny_checkpoint.text_encoder_path), str(outs[r])))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    files = [k for k in LocalStore(prepared_dataset).list("")]
    downloads = (pod / "downloads.log").read_text().split()
    assert sorted(downloads) == sorted(files)  # every file once, by one rank
    assert (pod / "dataset" / DATASET_MARKER).exists() and not list(pod.glob("rank*/dataset"))
    a, b = (torch.load(o, weights_only=True) for o in outs)
    for key in ("target", "reference", "mask", "context"):
        assert torch.equal(a[key], b[key]), key
    assert a["names"] == b["names"] and len(a["names"]) == 4
    # Each triplet encoded once in the pod, wherever it was encoded.
    assert sorted(a["encoded"] + b["encoded"]) == sorted(a["names"])
    # A restarted rank (the same pod) downloads and encodes nothing.
    _rank(0, str(prepared_dataset), str(pod), str(tiny_checkpoint.model_path),
          str(tiny_checkpoint.text_encoder_path), str(outs[0]))
    assert (pod / "downloads.log").read_text().split() == downloads
    assert torch.load(outs[0], weights_only=True)["encoded"] == []


def test_a_triplet_whose_rank_died_is_encoded_by_another(tmp_path, tiny_checkpoint, monkeypatch):
    """A lock held by a process that is gone is free again: no rank waits forever on a dead one."""
    import fcntl

    root = write_synthetic_prepared(tmp_path / "ds", clips=2, width=64, height=64, frames=9)
    cache = tmp_path / "latents"
    cache.mkdir()
    ctx = multiprocessing.get_context("spawn")
    holder = ctx.Process(target=_hold_lock_and_die, args=(str(cache / "00000.lock"),))
    holder.start()
    holder.join(60)
    assert holder.exitcode == 0
    with open(cache / "00000.lock", "a+") as handle:  # free again
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(handle, fcntl.LOCK_UN)
    data = _precompute(root, tiny_checkpoint, cache)
    assert len(data) == 2 and (cache / "00000.pt").exists()


def _hold_lock_and_die(path: str) -> None:
    import fcntl
    import os

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        os._exit(0)  # no unlock, no cleanup: the kernel releases it


# --- exit codes of the dataset's download: infrastructure, never DatasetInvalid ------------------


def test_a_full_scratch_disk_during_the_download_is_infrastructure(tmp_path, prepared_dataset, monkeypatch):
    import shutil

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copyfile", full)
    store = CountingStore(prepared_dataset, tmp_path / "log")
    with pytest.raises(ScratchError, match="No space left") as info:
        download_tree(store, tmp_path / "pod" / "dataset")
    assert failure(info.value, Stage.TRAINING)[0] == ExitCode.INTERNAL_ERROR
    assert not (tmp_path / "pod" / "dataset" / DATASET_MARKER).exists()


@pytest.mark.parametrize(("fail", "error", "code"), [
    (OSError(errno.ENOSPC, "No space left on device", "/scratch/x.part.minio"), ScratchError,
     ExitCode.INTERNAL_ERROR),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), ObjectStoreError,
     ExitCode.OBJECT_STORE_UNAVAILABLE),
    (RuntimeError("MaxRetryError: 503"), ObjectStoreError, ExitCode.OBJECT_STORE_UNAVAILABLE),
])
def test_s3_download_failures_are_retried_codes(tmp_path, monkeypatch, fail, error, code):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    store = S3Store("s3://bucket/run/prepared")

    def fget_object(*args, **kwargs):
        raise fail

    monkeypatch.setattr(store.client, "fget_object", fget_object)
    with pytest.raises(error) as info:
        store.get_file("manifest.json", tmp_path / "manifest.json")
    assert failure(info.value, Stage.TRAINING)[0] == code
    assert not ExitCode(code).is_user_error


def test_a_settings_work_dir_alone_keeps_latents_in_it(tmp_path, tiny_checkpoint, prepared_dataset):
    from iclora_trainer.loop import load_and_precompute

    settings = make_settings(tiny_checkpoint, tmp_path / "work")
    data, geometry = load_and_precompute(prepared_dataset, settings, CPU, torch.float32)
    assert geometry["triplets"] == len(data) == 4
    assert len(list((tmp_path / "work" / "latents").glob("*/*.pt"))) == 4
