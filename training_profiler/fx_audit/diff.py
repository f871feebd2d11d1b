"""``training-profiler diff``: what changed between two audit reports, for code review.

Compares records, not text: totals side by side, findings new in the head report and fixed since
the base, and the budgets the head newly exceeds. Torch-free: reads the JSON of ``audit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..findings import Finding
from ..formats.markdown import _cell
from ..units import human_bytes, human_count
from .config import Budget, check_budget
from .records import AuditReport

__all__ = ["ReportDiff", "diff_reports", "read_report"]

_METRICS = (("params", "Params"), ("trainable_params", "Trainable params"), ("macs", "MACs (forward)"),
            ("flops_forward", "FLOPs forward"), ("flops_backward", "FLOPs backward"), ("peak_bytes", "Peak memory"))


def _finding_key(f: Finding) -> tuple:
    return (f.code, f.location.module or f.location.path or "")


@dataclass
class ReportDiff:
    base: AuditReport
    head: AuditReport
    metrics: list[tuple[str, str, Any, Any]]  # (key, label, base, head)
    new_findings: list[Finding]
    fixed_findings: list[Finding]
    new_violations: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        out = [f"audit diff: {self.base.model} -> {self.head.model}"]
        for key, label, a, b in self.metrics:
            out.append(f"  {label:<18} {_fmt(key, a):>14} -> {_fmt(key, b):>14}  {_change(key, a, b)}")
        for title, items in (("new findings", self.new_findings), ("fixed findings", self.fixed_findings)):
            out.append(f"{title} ({len(items)}):")
            out += [f"  [{f.severity.value}] {f.code} {f.location.module or ''}: {f.message}" for f in items]
        if self.new_violations:
            out.append("budget newly exceeded: " + "; ".join(self.new_violations))
        return "\n".join(out) + "\n"

    def to_markdown(self) -> str:
        out = [f"### training-profiler audit diff: `{self.head.model}`", "", "| | base | head | change |", "|---|---:|---:|---:|"]
        for key, label, a, b in self.metrics:
            out.append(f"| {label} | {_fmt(key, a)} | {_fmt(key, b)} | {_change(key, a, b) or '0'} |")
        for title, items in (("New findings", self.new_findings), ("Fixed findings", self.fixed_findings)):
            out += ["", f"#### {title} ({len(items)})", ""]
            out += [f"- **{f.severity.value}** `{f.code}` `{f.location.module or ''}`: {_cell(f.message)}" for f in items] or ["None."]
        if self.new_violations:
            out += ["", "**Budget newly exceeded:** " + "; ".join(self.new_violations)]
        return "\n".join(out) + "\n"


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    return human_bytes(value) if key == "peak_bytes" else (f"{value:,}" if "params" in key else human_count(value))


def _change(key: str, a: Any, b: Any) -> str:
    if a is None or b is None or a == b:
        return ""
    delta = b - a
    sign = "+" if delta > 0 else "-"
    pct = f" ({delta / a:+.1%})" if a else ""
    return f"{sign}{_fmt(key, abs(delta))}{pct}"


def diff_reports(base: AuditReport, head: AuditReport, budget: Budget | None = None) -> ReportDiff:
    """What changed from ``base`` to ``head``: totals, new and fixed findings, budgets newly exceeded."""
    metrics = [(k, label, base.totals.get(k), head.totals.get(k)) for k, label in _METRICS]
    base_keys = {_finding_key(f) for f in base.findings}
    head_keys = {_finding_key(f) for f in head.findings}
    new = [f for f in head.findings if _finding_key(f) not in base_keys]
    fixed = [f for f in base.findings if _finding_key(f) not in head_keys]
    violations = []
    if budget is not None:
        before = {v.split(":")[0] for v in check_budget(base, budget)}
        violations = [v for v in check_budget(head, budget) if v.split(":")[0] not in before]
    return ReportDiff(base, head, metrics, new, fixed, violations)


def read_report(path: str) -> AuditReport:
    """An AuditReport from the JSON written by ``training-profiler audit --format json``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"audit report {path!r} does not exist: write one with `training-profiler audit ... --format json > {path}`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path!r} is not JSON ({exc}): pass a report written by `training-profiler audit --format json`") from None
    if not isinstance(data, dict) or "layers" not in data:
        raise ValueError(f"{path!r} is not an audit report: pass a report written by `training-profiler audit --format json`")
    return AuditReport.from_dict(data)
