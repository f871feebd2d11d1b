"""``training-profiler compare``: params, FLOPs, peak memory and largest batch of several models, side by side."""

from __future__ import annotations

import os
from typing import Any

from ..inputs import InputSpec, load_factory
from ..units import human_bytes, human_count

__all__ = ["audit_models", "compare_models", "compare_rows", "compare_table"]


def audit_models(factories: list[str], inputs: list[InputSpec], optimizer: str = "adam", amp: str | None = None,
                 memory: int | None = None, target: str | None = None) -> list[Any]:
    """One audit report per ``module:factory``: each model built and audited on the meta device."""
    from .review import audit_model, build

    reports = []
    for spec in factories:
        factory = load_factory(spec)
        reports.append(audit_model(build(factory), [i.make("meta") for i in inputs], optimizer=optimizer, amp=amp,
                                   factory=factory, name=spec, memory_budget=memory, target=target))
    return reports


def compare_rows(reports: list[Any]) -> list[dict[str, Any]]:
    """The comparison table's row of each report."""
    rows = []
    for report in reports:
        t = report.totals
        rows.append({"model": report.model, "params": t.get("params"), "macs": t.get("macs"),
                     "flops": (t.get("flops_forward") or 0) + (t.get("flops_backward") or 0),
                     "peak_bytes": t.get("peak_bytes"), "max_batch": t.get("max_batch_size", "-"),
                     "findings": sorted({f.code for f in report.findings})})
    return rows


def compare_models(factories: list[str], inputs: list[InputSpec], optimizer: str = "adam", amp: str | None = None,
                   memory: int | None = None, target: str | None = None) -> list[dict[str, Any]]:
    """One row per ``module:factory``: each model built and audited on the meta device."""
    return compare_rows(audit_models(factories, inputs, optimizer, amp, memory, target))


def compare_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    headers = ["Model", "Params", "MACs", "FLOPs/step", "Peak memory", "Max batch", "Findings"]
    body = [[r["model"], f"{r['params']:,}", human_count(r["macs"]), human_count(r["flops"]), human_bytes(r["peak_bytes"]),
             str(r["max_batch"]), ", ".join(r["findings"]) or "-"] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers, title="architecture comparison")
    for row in body:
        table.add_row(*row)
    with open(os.devnull, "w") as devnull:
        console = Console(width=160, record=True, file=devnull)
        console.print(table)
    return console.export_text()
