"""Match extracted files into reference/target/mask triplets by base name."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

VIDEO_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".avi"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
ROLES = {"_start": "reference", "_end": "target", "_mask": "mask"}
ROLE_HELP = {"reference": "<name>_start (reference video)", "target": "<name>_end (target video)",
             "mask": "<name>_mask (image or video mask)"}


@dataclass(frozen=True)
class Triplet:
    name: str
    reference: Path
    target: Path
    mask: Path
    caption: Path | None
    sources: dict[str, str]


@dataclass(frozen=True)
class Matching:
    triplets: list[Triplet]
    errors: list[dict[str, str]]  # {"name", "message"}
    unknown: list[str]
    # Every file used by no triplet (unknown names, captions without a triplet), with the reason.
    notes: list[dict[str, str]] = field(default_factory=list)  # {"name": archive path, "message"}


def _role(archive_name: str) -> tuple[str, str] | None:
    """(base name, role) of a file, or None when its name follows no rule.

    Names are compared in Unicode NFC: a decomposed (macOS, NFD) `café_start.mp4` pairs with a
    composed `café.txt`.
    """
    path = PurePosixPath(unicodedata.normalize("NFC", archive_name))
    ext = path.suffix.lower()
    stem = path.stem
    if ext == ".txt":
        return stem, "caption"
    for suffix, role in ROLES.items():
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            allowed = VIDEO_EXTENSIONS | (IMAGE_EXTENSIONS if role == "mask" else set())
            if ext in allowed:
                return stem[: -len(suffix)], role
            return None
    return None


def _why_unknown(archive_name: str) -> str:
    """Why a file that follows no naming rule is not used."""
    path = PurePosixPath(unicodedata.normalize("NFC", archive_name))
    stem = path.stem.lower()
    for suffix, role in ROLES.items():
        if stem.endswith(suffix):
            if len(stem) == len(suffix):
                return f"{archive_name}: no base name before '{suffix}'; not used"
            kinds = sorted(VIDEO_EXTENSIONS | (IMAGE_EXTENSIONS if role == "mask" else set()))
            what = "an image or a video" if role == "mask" else "a video"
            return f"{archive_name}: a {suffix} ({role}) file must be {what} ({' '.join(kinds)}); not used"
    for suffix in ROLES:
        word = suffix[1:]
        if stem.endswith(word) and len(stem) > len(word) + 1 and stem[-len(word) - 1] in "-. ":
            return (f"{archive_name}: not part of a triplet; did you mean '{path.stem[: -len(word) - 1]}{suffix}"
                    f"{path.suffix}'? (the role is written '{suffix}')")
    return (f"{archive_name}: not part of a triplet (files are <name>_start and <name>_end videos, "
            "<name>_mask image or video, <name>.txt caption); not used")


def _orphan_caption(archive_name: str, name: str, groups: dict[str, dict]) -> str:
    near = [g for g in groups if g != name and set(groups[g]) - {"caption"}
            and " ".join(g.split()).casefold() == " ".join(name.split()).casefold()]
    hint = f"; did you mean the triplet '{near[0]}'? (names must match exactly)" if near else ""
    return (f"{archive_name}: caption of no triplet (no {name}_start, {name}_end or {name}_mask file); "
            f"not used{hint}")


def match_triplets(files: dict[str, Path]) -> Matching:
    """Group files into triplets; every incomplete triplet is reported with what it lacks, and
    every file that pairs with nothing is named with the reason (`Matching.notes`)."""
    groups: dict[str, dict[str, list[tuple[str, Path]]]] = {}
    unknown: list[str] = []
    notes: list[dict[str, str]] = []
    for archive_name, path in sorted(files.items()):
        found = _role(archive_name)
        if found is None:
            unknown.append(archive_name)
            notes.append({"name": archive_name, "message": _why_unknown(archive_name)})
            continue
        name, role = found
        groups.setdefault(name, {}).setdefault(role, []).append((archive_name, path))
    triplets: list[Triplet] = []
    errors: list[dict[str, str]] = []
    for name, roles in sorted(groups.items()):
        doubled = [f"{role}: {', '.join(a for a, _ in items)}" for role, items in roles.items() if len(items) > 1]
        if doubled:
            errors.append({"name": name, "message": f"{name}: more than one file per role ({'; '.join(doubled)})"})
            continue
        media_roles = set(roles) - {"caption"}
        if not media_roles:
            for archive_name, _ in roles["caption"]:  # a caption without a triplet
                unknown.append(archive_name)
                notes.append({"name": archive_name, "message": _orphan_caption(archive_name, name, groups)})
            continue
        missing = [ROLE_HELP[r] for r in ("reference", "target", "mask") if r not in roles]
        if missing:
            have = ", ".join(a for r in sorted(media_roles) for a, _ in roles[r])
            errors.append({"name": name, "message": f"{name}: incomplete triplet, missing {' and '.join(missing)} "
                                                    f"(found {have})"})
            continue
        sources = {role: items[0][0] for role, items in roles.items()}
        triplets.append(Triplet(
            name=name,
            reference=roles["reference"][0][1],
            target=roles["target"][0][1],
            mask=roles["mask"][0][1],
            caption=roles["caption"][0][1] if "caption" in roles else None,
            sources=sources,
        ))
    return Matching(triplets=triplets, errors=errors, unknown=sorted(unknown),
                    notes=sorted(notes, key=lambda n: n["name"]))
