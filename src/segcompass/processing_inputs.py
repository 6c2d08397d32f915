"""Checks of a SegCompass processor's inputs before they reach the tokenizer and image processors: string lists,
control characters in instructions, extreme aspect ratios."""

from __future__ import annotations

MAX_ASPECT_RATIO = 200
"""The longest side may be at most this many times the shortest (the backbones' image processors refuse more)."""


def _check_aspect_ratios(images) -> None:
    for i, image in enumerate(images):
        width, height = image.size
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise ValueError(
                f"Image {i} is {width}x{height} pixels (width x height), an aspect ratio of "
                f"{max(width, height) / min(width, height):.0f}:1; the backbone's image processor accepts at most "
                f"{MAX_ASPECT_RATIO}:1. Crop or pad the image to a less extreme aspect ratio."
            )


def _check_no_control_characters(instructions: list[str]) -> None:
    """Refuse control characters (NUL, BEL, ESC, ...; tab and newlines are fine): the tokenizer reads them as unknown
    or drops them, so the model would answer a different instruction than the one shown."""
    import unicodedata

    for i, instruction in enumerate(instructions):
        bad = sorted({c for c in instruction if unicodedata.category(c) == "Cc" and c not in "\t\n\r"})
        if bad:
            raise ValueError(
                f"Instruction {i} ({instruction!r}) contains control character(s) {', '.join(map(repr, bad))}; remove "
                "them (plain text, tabs and newlines are fine)."
            )


def _as_str_list(value, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ValueError(f"`{name}` is empty; pass at least one string.")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"`{name}` must be a string or a list of strings; item {i} is {type(item).__name__}.")
    return items
