"""Image sizes: the one parser behind every size setting and ``--size``-like option.

A size is ``(height, width)`` in pixels. Written forms: ``"480x640"`` (also ``"480X640"``, ``"480×640"``), one
number for a square (``256`` or ``"256"``), or a pair ``(480, 640)`` / ``[480, 640]``.

Examples:
    >>> parse_size("480x640")
    (480, 640)
    >>> parse_size(256)
    (256, 256)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def parse_size(value: str | int | Sequence[int], *, what: str = "size", minimum: int = 1) -> tuple[int, int]:
    """``(height, width)`` from a written size; ``ValueError`` naming ``what`` if it is malformed or too small."""
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            h = w = value
        elif isinstance(value, str):
            parts = value.strip().lower().replace("×", "x").split("x")
            if len(parts) > 2:
                raise ValueError
            h, w = int(parts[0]), int(parts[-1])
        else:
            h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{what}: expected HxW (HEIGHTxWIDTH such as 480x640, or one number for a square), got {value!r}"
        ) from None
    if h < minimum or w < minimum:
        raise ValueError(f"{what} must be at least {minimum}x{minimum} pixels, got {h}x{w} (HxW)")
    return h, w


def optional_size(value: Any, *, what: str = "size", minimum: int = 1) -> tuple[int, int] | None:
    """:func:`parse_size`, with ``None`` (not set) passed through."""
    return None if value is None else parse_size(value, what=what, minimum=minimum)
