"""The grouped terminal report, one block per file::

    File: model.py
      Line 45: [error] AMP301 binary_cross_entropy is unsafe under autocast ...
        -> why: ...
        -> fix: ...
"""

from __future__ import annotations

from itertools import groupby
from typing import Iterable

from ..findings import Finding, Severity


def findings_to_text(findings: Iterable[Finding]) -> str:
    ordered = sorted(findings, key=Finding.sort_key)
    if not ordered:
        return "No findings.\n"
    out: list[str] = []
    for path, group in groupby(ordered, key=lambda f: f.location.path or f.location.module or "<model>"):
        out.append(f"File: {path}")
        for f in group:
            where = f"Line {f.line}" if f.line is not None else (f"Module {f.location.module}" if f.location.module else "Model")
            out.append(f"  {where}: [{f.severity.value}] {f.code} {f.message}")
            if f.why:
                out.append(f"    -> why: {f.why}")
            if f.fix:
                out.append(f"    -> fix: {f.fix}")
        out.append("")
    counts = {}
    for f in ordered:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    summary = ", ".join(f"{counts[s]} {s.value}{'s' if counts[s] != 1 and s is not Severity.INFO else ''}"
                        for s in Severity if s in counts)
    out.append(f"{len(ordered)} finding{'s' if len(ordered) != 1 else ''} ({summary})")
    return "\n".join(out) + "\n"
