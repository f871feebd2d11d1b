"""Views of findings: every product renders its Finding records through these functions."""

from __future__ import annotations

from .jsonfmt import findings_to_json
from .markdown import findings_to_markdown
from .sarif import findings_to_sarif
from .text import findings_to_text

__all__ = ["findings_to_json", "findings_to_markdown", "findings_to_sarif", "findings_to_text", "render"]

FORMATS = ("text", "json", "sarif", "markdown")


def render(findings, fmt: str, rules=(), tool_name: str = "training-profiler") -> str:
    """Render ``findings`` as ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "text":
        return findings_to_text(findings)
    if fmt == "json":
        return findings_to_json(findings)
    if fmt == "sarif":
        return findings_to_sarif(findings, rules=rules, tool_name=tool_name)
    if fmt == "markdown":
        return findings_to_markdown(findings)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
