"""Hostile and sloppy archives: nothing escapes the work dir, every rejection names the entry."""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from iclora_trainer.dataset.archive import Limits, extract_zip
from iclora_trainer.dataset.preflight import FitParams, prepare_dataset
from iclora_trainer.dataset.triplets import match_triplets
from iclora_trainer.errors import DatasetError
from tests.helpers import image, solid_frames, video, write_zip


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """A work dir inside a parent whose other content must never change."""
    (tmp_path / "outside.txt").write_text("keep")
    work = tmp_path / "work"
    before = _tree(tmp_path)
    yield tmp_path, work
    after = {p for p in _tree(tmp_path) if not p.startswith(("work", "a.zip"))}
    assert after == {p for p in before if not p.startswith("work")}, "something was written outside the work dir"
    assert (tmp_path / "outside.txt").read_text() == "keep"


def raw_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize(("name", "rule"), [
    ("../evil_start.mp4", "'..'"),
    ("a/../../evil_start.mp4", "'..'"),
    ("/etc/evil_start.mp4", "absolute path"),
    ("C:/evil_start.mp4", "absolute path"),
    # A backslash is a folder separator (Windows tools), then the same guards as for '/'.
    ("dir\\..\\evil.mp4", "'..'"),
    ("..\\..\\evil_start.mp4", "'..'"),
    ("set\\..\\..\\evil_start.mp4", "'..'"),
    ("C:\\evil_start.mp4", "absolute path"),
    ("c:evil_start.mp4", "absolute path"),
    ("\\evil_start.mp4", "absolute path"),
    ("\\\\server\\share\\evil_start.mp4", "absolute path"),
])
def test_path_traversal_is_refused(sandbox, name, rule):
    tmp, work = sandbox
    z = raw_zip(tmp / "a.zip", [(name, b"x")])
    with pytest.raises(DatasetError, match=rule) as info:
        extract_zip(z, work)
    assert name in str(info.value)


def test_symlink_entries_are_refused(sandbox):
    tmp, work = sandbox
    info = zipfile.ZipInfo("s_start.mp4")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = raw_zip(tmp / "a.zip", [(info, b"/etc/passwd")])
    with pytest.raises(DatasetError, match="symbolic link"):
        extract_zip(z, work)


def test_zip_bombs_are_refused(sandbox):
    tmp, work = sandbox
    with zipfile.ZipFile(tmp / "a.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s_start.mp4", b"\0" * (8 << 20))
    with pytest.raises(DatasetError, match="compression ratio"):
        extract_zip(tmp / "a.zip", work)
    with pytest.raises(DatasetError, match="expands beyond"):
        extract_zip(tmp / "a.zip", work, Limits(max_total_bytes=1 << 20, max_ratio=1e9))


def test_too_many_entries(sandbox):
    tmp, work = sandbox
    z = raw_zip(tmp / "a.zip", [(f"f{i}.txt", b"x") for i in range(5)])
    with pytest.raises(DatasetError, match="5 entries"):
        extract_zip(z, work, Limits(max_entries=4))


def test_encrypted_entries_are_refused(sandbox):
    tmp, work = sandbox
    z = raw_zip(tmp / "a.zip", [("s_start.mp4", b"x")])
    data = bytearray(z.read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        at = data.find(signature)
        data[at + flag_offset] |= 0x1  # general purpose bit 0: encrypted
    z.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="encrypted"):
        extract_zip(z, work)


def test_corrupt_entry_is_named(sandbox):
    tmp, work = sandbox
    with zipfile.ZipFile(tmp / "a.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("s_start.mp4", b"some video bytes" * 1000)
    data = bytearray((tmp / "a.zip").read_bytes())
    data[60:80] = b"\xff" * 20  # inside the compressed stream
    (tmp / "a.zip").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=re.escape("s_start.mp4")):
        extract_zip(tmp / "a.zip", work)


@pytest.mark.parametrize("content", [b"", b"this is not a zip", b"PK\x03\x04truncated"])
def test_not_a_zip(sandbox, content):
    tmp, work = sandbox
    (tmp / "a.zip").write_bytes(content)
    with pytest.raises(DatasetError, match="not a zip archive"):
        extract_zip(tmp / "a.zip", work)


def test_metadata_and_hidden_files_are_ignored_and_nested_folders_kept(sandbox):
    tmp, work = sandbox
    z = raw_zip(tmp / "a.zip", [("__MACOSX/._s_start.mp4", b"x"), ("data/._s_end.mp4", b"x"), (".DS_Store", b"x"),
                                ("data/Thumbs.db", b"x"), (".hidden/s.txt", b"x"), ("data/deep/s_start.mp4", b"v")])
    out = extract_zip(z, work)
    assert list(out.files) == ["data/deep/s_start.mp4"]
    assert sorted(out.ignored) == sorted(["__MACOSX/._s_start.mp4", "data/._s_end.mp4", ".DS_Store",
                                          "data/Thumbs.db", ".hidden/s.txt"])


def test_duplicate_names_name_both_paths(sandbox):
    tmp, work = sandbox
    z = raw_zip(tmp / "a.zip", [("a/s_start.mp4", b"1"), ("b/s_start.mp4", b"2")])
    with pytest.raises(DatasetError, match=re.escape("a/s_start.mp4 and b/s_start.mp4")):
        extract_zip(z, work)


def test_matching_lists_every_incomplete_triplet_and_orphans():
    files = {n: Path(n) for n in ["a_start.mp4", "a_end.MP4", "a_mask.PNG", "a.txt",
                                  "b_end.mov", "c_start.mkv", "c_mask.mp4", "d_mask.png",
                                  "orphan.txt", "notes.pdf", "e_start.png"]}
    m = match_triplets(files)
    assert [t.name for t in m.triplets] == ["a"]
    assert m.triplets[0].caption == Path("a.txt")
    errors = {e["name"]: e["message"] for e in m.errors}
    assert set(errors) == {"b", "c", "d"}
    assert "_start" in errors["b"] and "_mask" in errors["b"]
    assert errors["c"].startswith("c: incomplete triplet, missing <name>_end (target video) (found")
    assert "_start" in errors["d"] and "_end" in errors["d"]
    assert m.unknown == ["e_start.png", "notes.pdf", "orphan.txt"]


def test_empty_archive_and_missing_pieces_reject_the_dataset(tmp_path):
    z = write_zip(tmp_path / "e.zip", {})
    report = prepare_dataset(z, FitParams(9, 24, 32, 32), tmp_path / "o", tmp_path / "w")
    assert not report.ok and report.usable == 0
    frames = video(solid_frames(12, 32, 32))
    z = write_zip(tmp_path / "m.zip", {"a_start.mp4": frames, "a_end.mp4": frames,
                                       "a_mask.png": image(np.full((32, 32), 255, np.uint8)),
                                       "b_end.mp4": frames})
    report = prepare_dataset(z, FitParams(9, 24, 32, 32), tmp_path / "o2", tmp_path / "w2")
    assert not report.ok
    assert report.errors[0]["name"] == "b"
    with pytest.raises(DatasetError, match="b: incomplete triplet"):
        report.raise_for_status()
