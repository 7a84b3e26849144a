"""What is wrong with a media file, in the user's terms (never an errno).

FFmpeg and Pillow report failures as library codes ("[Errno 1] Operation not permitted",
"Invalid data found when processing input"). These helpers look at the file itself to say
what happened: it is empty, cut off (its container declares more bytes than the file has),
an MP4 without its index, or not a video at all (an image, a web page, a zip ...).
"""

from __future__ import annotations

from pathlib import Path

# ISO base media (mp4, mov, m4v, 3gp): top-level box types that may open a file.
_ISO_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx"}
# Top-level boxes a writer declares the size of: one running past the end means a cut file (an
# unknown type is more likely trailing garbage after a complete file: not judged).
_ISO_TOP_BOXES = _ISO_FIRST_BOXES | {b"moof", b"mfra", b"meta", b"udta", b"emsg", b"prft", b"pdin", b"ssix"}
_MATROSKA = b"\x1a\x45\xdf\xa3"
_MATROSKA_SEGMENT = b"\x18\x53\x80\x67"

_SIGNATURES: list[tuple[bytes, int, str]] = [  # (magic, offset, what the file is)
    (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"),
    (b"\xff\xd8\xff", 0, "a JPEG image"),
    (b"GIF8", 0, "a GIF image"),
    (b"BM", 0, "a BMP image"),
    (b"WEBP", 8, "a WebP image"),
    (b"II*\x00", 0, "a TIFF image"),
    (b"MM\x00*", 0, "a TIFF image"),
    (b"PK\x03\x04", 0, "a zip archive"),
    (b"%PDF", 0, "a PDF document"),
    (b"ID3", 0, "an MP3 audio file"),
    (b"fLaC", 0, "a FLAC audio file"),
    (b"OggS", 0, "an Ogg file"),
    (b"WAVE", 8, "a WAV audio file"),
]


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _iso_damage(path: Path, size: int, *, need_index: bool) -> str | None:
    """An mp4/mov whose boxes run past the end of the file, or (need_index) that has no 'moov'."""
    pos, boxes = 0, []
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            box_size, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if box_size == 1 and len(head) == 16:
                box_size = int.from_bytes(head[8:16], "big")  # 64-bit size
            elif box_size == 0:
                box_size = size - pos  # "to the end of the file"
            if box_size < 8 or kind not in _ISO_TOP_BOXES:
                return None  # not a box structure we can judge; let FFmpeg's words stand
            name = kind.decode("ascii")
            boxes.append(name)
            if pos + box_size > size:
                return (f"is cut off (truncated): the file has {size:,} bytes but its '{name}' box needs "
                        f"{pos + box_size:,} (an incomplete download, copy or recording)")
            pos += box_size
    if need_index and "moov" not in boxes:
        return ("has no index ('moov' box missing): the recording or export did not finish, "
                "or the file was cut off")
    return None


def _ebml_vint(data: bytes, at: int) -> tuple[int | None, int]:
    """(value or None for 'unknown size', length) of the EBML variable-size integer at `at`."""
    first = data[at]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8 or at + length > len(data):
        return None, 0
    value = first & (0xFF >> length)
    for b in data[at + 1:at + length]:
        value = (value << 8) | b
    return (None if value == (1 << (7 * length)) - 1 else value), length


def _matroska_damage(path: Path, size: int) -> str | None:
    head = _read(path, 0, 256)
    size_at = 4
    header_size, n = _ebml_vint(head, size_at)
    if header_size is None or not n:
        return None
    seg = size_at + n + header_size
    if head[seg:seg + 4] != _MATROSKA_SEGMENT:
        return None
    seg_size, n = _ebml_vint(head, seg + 4)
    if seg_size is None or not n:
        return None  # written live, size unknown: nothing to compare
    end = seg + 4 + n + seg_size
    if end > size:
        return (f"is cut off (truncated): the file has {size:,} bytes but its Matroska segment needs {end:,} "
                "(an incomplete download, copy or recording)")
    return None


def cut_off(path: Path, *, need_index: bool = False) -> str | None:
    """Why the container is incomplete, or None when its own sizes are consistent (or unknown)."""
    try:
        size = Path(path).stat().st_size
        if size == 0:
            return "is empty (0 bytes)"
        head = _read(path, 0, 12)
        if head[4:8] in _ISO_FIRST_BOXES:
            return _iso_damage(path, size, need_index=need_index)
        if head[:4] == _MATROSKA:
            return _matroska_damage(path, size)
        if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
            end = 8 + int.from_bytes(head[4:8], "little")
            if end > size:
                return (f"is cut off (truncated): the file has {size:,} bytes but its AVI header declares "
                        f"{end:,} (an incomplete download, copy or recording)")
    except (OSError, IndexError):
        return None
    return None


def codec_name(path: Path) -> str | None:
    """The codec a container names for its video (an mp4/mov sample-entry fourcc, a Matroska
    CodecID), read from the file: FFmpeg gives no name for a codec it does not know."""
    import re

    try:
        head = _read(path, 0, 1 << 20)
    except OSError:
        return None
    at = head.find(b"stsd")
    if at >= 4 and len(head) >= at + 20:
        tag = head[at + 16:at + 20]
        return tag.decode("ascii") if tag.isascii() and tag.decode("ascii").isprintable() else None
    match = re.search(rb"V_[A-Z0-9][A-Za-z0-9/_.]{1,40}", head)
    return match.group().decode("ascii") if match else None


def what_it_is(path: Path) -> str | None:
    """'a PNG image', 'a web page (HTML)', ... for a file that is not the media it is named as."""
    try:
        head = _read(path, 0, 512)
    except OSError:
        return None
    for magic, offset, kind in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return kind
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "a web page (HTML): the link may point to a download page rather than the file"
    if text.startswith(b"<?xml") or text.startswith(b"<"):
        return "an XML or HTML document (an error page from the server?)"
    if text[:1] in (b"{", b"["):
        return "a JSON document (an error answer from the server?)"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return None


def ffmpeg_words(exc: BaseException) -> str:
    """FFmpeg's own description of an error, without the errno and the file name."""
    words = getattr(exc, "strerror", None) or str(exc)
    log = getattr(exc, "log", None)
    if log and isinstance(log, tuple) and len(log) >= 3 and log[2]:
        words = f"{words}: {str(log[2]).strip()}"
    return words


def unreadable_video(path: Path, exc: BaseException) -> str:
    """Why FFmpeg could not open `path` as a video (the sentence after the file's name)."""
    import av

    damage = cut_off(path, need_index=True)
    if damage:
        return damage
    kind = what_it_is(path)
    if kind:
        return f"is not a video: it is {kind}"
    if isinstance(exc, av.error.EOFError):
        return "is cut off (truncated): the file ends before its header is complete"
    if isinstance(exc, av.error.InvalidDataError):
        return "is not a video file FFmpeg can read (unrecognised or damaged data)"
    return f"cannot be opened as a video (FFmpeg: {ffmpeg_words(exc)})"


def undecodable_video(path: Path, exc: BaseException, decoded: int, at: float | None) -> str:
    """Why decoding stopped (after `decoded` frames, the last at `at` seconds)."""
    import av

    if isinstance(exc, av.error.DecoderNotFoundError):
        return "uses a video codec this FFmpeg cannot decode; re-encode it (for example as H.264 in an .mp4)"
    damage = cut_off(path)
    cause = damage or f"is damaged (FFmpeg: {ffmpeg_words(exc)})"
    if not decoded:
        return f"{cause}; no frame could be decoded"
    return f"{cause}; {decoded} frame{'s' if decoded != 1 else ''} decoded (up to t={at or 0.0:.2f} s) before the error"


def unreadable_image(path: Path, exc: BaseException) -> str:
    """Why Pillow could not read `path` as an image mask."""
    from PIL import Image, UnidentifiedImageError

    try:
        if Path(path).stat().st_size == 0:
            return "is empty (0 bytes)"
    except OSError:
        pass
    if isinstance(exc, Image.DecompressionBombError):
        return f"is too large to be a mask ({exc})"
    if isinstance(exc, UnidentifiedImageError):
        kind = what_it_is(path)
        if kind is None and cut_off(path) is None and _looks_like_video(path):
            kind = "a video: give it a video extension (.mp4, .mov, .mkv, .webm or .avi)"
        return f"is not an image: it is {kind}" if kind else "is not an image Pillow can read (unknown format)"
    text = str(exc).lower()
    if "truncated" in text or "broken data stream" in text or "premature end" in text:
        return "is cut off (truncated): the image data ends early; export or upload it again"
    return f"cannot be read as an image ({exc})"


def _looks_like_video(path: Path) -> bool:
    head = _read(path, 0, 12)
    return head[4:8] in _ISO_FIRST_BOXES or head[:4] == _MATROSKA or (head[:4] == b"RIFF" and head[8:11] == b"AVI")
