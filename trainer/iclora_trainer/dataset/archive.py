"""Safe extraction of a user's zip: nothing outside the work dir, bounded size, no surprises."""

from __future__ import annotations

import stat
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from iclora_trainer.errors import DatasetError, ScratchError

IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 50 * 1024**3
    max_entries: int = 20_000
    # Video compresses poorly; a ratio this high is a zip bomb, not a dataset.
    max_ratio: float = 200.0


@dataclass
class Extracted:
    files: dict[str, Path] = field(default_factory=dict)  # archive path -> extracted file
    ignored: list[str] = field(default_factory=list)


def is_ignored(name: str) -> bool:
    """macOS metadata, Windows thumbnails and hidden files or folders."""
    parts = PurePosixPath(name).parts
    if parts and parts[0] == "__MACOSX":
        return True
    return any(p.startswith(".") for p in parts) or parts[-1].lower() in IGNORED_NAMES


def is_os_metadata(name: str) -> bool:
    """What an operating system adds to an archive by itself (`__MACOSX/`, `._*`, `.DS_Store`, ...)."""
    parts = PurePosixPath(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("._")
                            or parts[-1].lower() in IGNORED_NAMES)


def archive_path(raw: str) -> str:
    """An entry's path as the dataset sees it.

    A backslash is a folder separator (some Windows tools write `set\\clip_start.mp4`), and
    names are Unicode NFC (macOS writes decomposed NFD names: `cafe` + U+0301 is `café`), so
    files pair and compare by what their names show, not by how they were encoded.
    """
    return unicodedata.normalize("NFC", raw.replace("\\", "/"))


def _unsafe(name: str) -> str | None:
    """The rule a (normalised, `archive_path`) entry path breaks, or None."""
    if name.startswith("/"):
        return "absolute path"
    if len(name) > 1 and name[1] == ":":
        return "absolute path (drive letter)"
    if any(p == ".." for p in PurePosixPath(name).parts):
        return "path escapes the archive ('..')"
    return None


def extract_zip(zip_path: Path, dest: Path, limits: Limits | None = None) -> Extracted:
    """Extract `zip_path` into `dest`; raise DatasetError naming the entry and the rule broken."""
    limits = limits or Limits()
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{Path(zip_path).name}: not a zip archive ({exc})") from exc
    except OSError as exc:  # the downloaded file on the scratch disk, not the archive's content
        raise ScratchError(f"{zip_path}: cannot be read from scratch ({exc})") from exc
    out = Extracted()
    seen: dict[str, str] = {}
    total = 0
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.max_entries:
            raise DatasetError(f"archive has {len(entries)} entries, more than the limit of {limits.max_entries}")
        for info in entries:
            # The same guards for `\\` as for `/`; a refusal names the entry as the archive spells it.
            raw, name = info.filename, archive_path(info.filename)
            problem = _unsafe(name)
            if problem:
                raise DatasetError(f"{raw}: refused ({problem})")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DatasetError(f"{raw}: refused (symbolic link)")
            if info.is_dir() or name.endswith("/"):
                continue
            if is_ignored(name):
                out.ignored.append(name)
                continue
            if info.flag_bits & 0x1:
                raise DatasetError(f"{name}: encrypted entries are not supported; zip without a password")
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio \
                    and info.file_size > CHUNK:
                raise DatasetError(f"{name}: compression ratio {info.file_size / info.compress_size:.0f}:1 "
                                   f"exceeds {limits.max_ratio:.0f}:1 (zip bomb?)")
            base = PurePosixPath(name).name
            if base.lower() in seen:
                raise DatasetError(f"file names must be unique across the archive: {seen[base.lower()]} and {raw}")
            seen[base.lower()] = raw
            target = (dest / name).resolve()
            if dest not in target.parents:
                raise DatasetError(f"{raw}: refused (path escapes the archive)")
            written = 0
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    # Count real bytes: sizes in the header are the archive's claim, not a fact.
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if total + written > limits.max_total_bytes:
                            raise DatasetError(f"archive expands beyond {limits.max_total_bytes} bytes "
                                               f"(at {name}; zip bomb?)")
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise DatasetError(f"{name}: corrupt archive entry ({exc})") from exc
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                # A file and a folder of the same name (`set` and `set\\x`): the archive's fault, named.
                raise DatasetError(f"{raw}: cannot be extracted: a file and a folder share its path") from exc
            except OSError as exc:  # a full or failing scratch disk: infrastructure, retried
                raise ScratchError(f"{name}: extracting into {dest} (scratch): {exc}") from exc
            total += written
            out.files[name] = target
    return out
