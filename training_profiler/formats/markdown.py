"""Markdown view for pull-request comments."""

from __future__ import annotations

from typing import Iterable

from ..findings import Finding


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def findings_to_markdown(findings: Iterable[Finding]) -> str:
    ordered = sorted(findings, key=Finding.sort_key)
    if not ordered:
        return "No findings.\n"
    lines = ["| Severity | Code | Where | Message | Fix |", "|---|---|---|---|---|"]
    for f in ordered:
        lines.append(
            f"| {f.severity.value} | `{f.code}` | `{_cell(str(f.location))}` | {_cell(f.message)} | {_cell(f.fix)} |"
        )
    return "\n".join(lines) + "\n"
