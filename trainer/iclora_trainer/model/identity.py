"""What a LoRA was trained on: the base checkpoint's identity, written into the LoRA and config.json.

A LoRA only means something on the weights it was trained against (LTX-2.3's full "dev" model,
not the distilled one, which shares its layout). The identity is the checkpoint's file name and
a fingerprint cheap enough for a 40+ GB file: SHA-256 over the safetensors header (tensor
names, dtypes, shapes, offsets and the metadata with the model config) and 16 blocks of 1 MiB
sampled evenly across the tensor data (so two checkpoints of the same layout but different
weights differ). Files up to 64 MiB are hashed whole.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

FINGERPRINT_RECIPE = "sha256(header + 16 x 1 MiB sampled blocks); whole file up to 64 MiB"
_SAMPLES = 16
_BLOCK = 1 << 20
_WHOLE_FILE_LIMIT = 64 << 20


@dataclass(frozen=True)
class CheckpointIdentity:
    file: str  # base name, e.g. ltx-2.3-22b-dev.safetensors
    fingerprint: str  # hex SHA-256 by FINGERPRINT_RECIPE


def checkpoint_identity(path: str | Path) -> CheckpointIdentity:
    """Identity of a local safetensors checkpoint.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is not a safetensors file (header length past the end).
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= _WHOLE_FILE_LIMIT:
            for chunk in iter(lambda: f.read(_BLOCK), b""):
                digest.update(chunk)
        else:
            (header_len,) = struct.unpack("<Q", f.read(8))
            data_start = 8 + header_len
            if data_start > size:
                raise ValueError(f"{path}: not a safetensors file (header of {header_len} bytes in {size})")
            f.seek(0)
            digest.update(f.read(data_start))
            span = max(size - data_start - _BLOCK, 0)
            for i in range(_SAMPLES):
                f.seek(data_start + span * i // (_SAMPLES - 1))
                digest.update(f.read(_BLOCK))
    return CheckpointIdentity(file=path.name, fingerprint=digest.hexdigest())


def ltx_core_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ltx-core")
    except PackageNotFoundError:
        return "unknown"
