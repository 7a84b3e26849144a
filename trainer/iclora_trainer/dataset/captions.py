"""Captions: text by its byte-order mark (UTF-8, UTF-16, UTF-32), else UTF-8; NFC, whitespace
normalised, trigger phrase first."""

from __future__ import annotations

import codecs
import unicodedata
from pathlib import Path

from iclora_trainer.errors import DatasetError

# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
         (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
         (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16")]


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def decode_caption(data: bytes, name: str) -> str:
    """The text of a caption file: the encoding its byte-order mark names (Windows Notepad saves
    "Unicode" as UTF-16 LE with a BOM), else UTF-8; anything else is an error naming the file."""
    for bom, encoding, label in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding)
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{name}: caption starts with a {label} byte-order mark but is not {label} text "
                                   f"({exc.reason} at byte {exc.start + len(bom)}); save it as UTF-8") from exc
    looks_utf16 = " (it looks like UTF-16 without a byte-order mark)" if data.count(0) >= len(data) // 4 else ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: caption is not UTF-8 text{looks_utf16}: byte 0x{data[exc.start]:02x} at "
                           f"position {exc.start} is invalid; save it as UTF-8") from exc
    if "\x00" in text:  # ASCII saved as UTF-16 without a BOM is valid UTF-8, one NUL per letter
        raise DatasetError(f"{name}: caption is not UTF-8 text{looks_utf16}: it contains NUL bytes; "
                           "save it as UTF-8")
    return text


def final_caption(trigger_phrase: str, caption_file: Path | None, archive_name: str | None = None) -> str:
    """The caption the model trains on; a missing caption gives the trigger phrase alone."""
    caption = ""
    if caption_file is not None:
        caption = decode_caption(caption_file.read_bytes(), archive_name or caption_file.name)
    return normalise(f"{trigger_phrase} {caption}")
