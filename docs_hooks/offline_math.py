"""MkDocs hook: formulas rendered to MathML when the site is built, so they display with no script and no network.

``pymdownx.arithmatex`` (generic mode) leaves ``\\( ... \\)`` in ``<span class="arithmatex">`` and ``\\[ ... \\]`` in
``<div class="arithmatex">``; this hook converts each to MathML with ``latex2mathml`` (pure Python), which every
current browser renders natively. A formula latex2mathml cannot read fails the build, naming the page.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])\s*</(?P=tag)>',
    re.S,
)


def to_mathml(latex: str, display: bool) -> str:
    """MathML of one formula (``display`` for a block)."""
    return convert(latex.strip(), display="block" if display else "inline")


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        block = match.group("block") is not None
        latex = html.unescape(match.group("block") if block else match.group("inline"))
        try:
            mathml = to_mathml(latex, block)
        except Exception as exc:  # noqa: BLE001 - any converter failure must name the page and formula
            raise ValueError(f"{page.file.src_path}: formula {latex!r} could not be converted: {exc}") from exc
        return f'<div class="arithmatex">{mathml}</div>' if block else f'<span class="arithmatex">{mathml}</span>'

    return _MATH.sub(replace, html_text)
