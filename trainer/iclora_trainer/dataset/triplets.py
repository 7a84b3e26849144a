"""Match extracted files into reference/target/mask triplets by base name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

VIDEO_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".avi"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
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


def _role(archive_name: str) -> tuple[str, str] | None:
    """(base name, role) of a file, or None when its name follows no rule."""
    path = PurePosixPath(archive_name)
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


def match_triplets(files: dict[str, Path]) -> Matching:
    """Group files into triplets; every incomplete triplet is reported with what it lacks."""
    groups: dict[str, dict[str, list[tuple[str, Path]]]] = {}
    unknown: list[str] = []
    for archive_name, path in sorted(files.items()):
        found = _role(archive_name)
        if found is None:
            unknown.append(archive_name)
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
            unknown.extend(a for a, _ in roles["caption"])  # a caption without a triplet
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
    return Matching(triplets=triplets, errors=errors, unknown=sorted(unknown))
