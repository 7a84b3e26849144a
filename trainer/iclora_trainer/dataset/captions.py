"""Captions: UTF-8 text, BOM stripped, whitespace normalised, trigger phrase first."""

from __future__ import annotations

from pathlib import Path

from iclora_trainer.errors import DatasetError


def normalise(text: str) -> str:
    return " ".join(text.split())


def final_caption(trigger_phrase: str, caption_file: Path | None, archive_name: str | None = None) -> str:
    """The caption the model trains on; a missing caption gives the trigger phrase alone."""
    caption = ""
    if caption_file is not None:
        try:
            caption = caption_file.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{archive_name or caption_file.name}: caption is not UTF-8 text ({exc})") from exc
    return normalise(f"{trigger_phrase} {caption}")
