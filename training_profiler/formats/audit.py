"""Views of a whole audit report for code review: Markdown (PR comment), JSON, SARIF 2.1.0.

The report's findings already carry their source locations (the model's file and the line where
the module is defined, found with ``inspect`` by the rules); SARIF is the findings view with the
audit rules' descriptors and the report's totals as run properties.
"""

from __future__ import annotations

from ..units import human_bytes, human_count
from .markdown import _cell, findings_to_markdown
from .sarif import findings_to_sarif

__all__ = ["audit_to_json", "audit_to_markdown", "audit_to_sarif", "human_count", "human_bytes"]

AUDIT_FORMATS = ("markdown", "json", "sarif")


def _memory_line(report) -> str:
    memory = report.memory
    if memory is None:
        return "not simulated"
    where = memory.peak_phase + (f" at `{memory.peak_module}`" if memory.peak_module else "")
    extras = [x for x in (memory.target, memory.optimizer, f"amp {memory.amp}" if memory.amp else None,
                          f"reserved {human_bytes(memory.reserved_bytes)}" if memory.reserved_bytes is not None else None)
              if x]
    return f"{human_bytes(memory.peak_bytes)} ({where}{'; ' + ', '.join(extras) if extras else ''})"


def audit_to_markdown(report, top: int = 10) -> str:
    """Totals, findings and the ``top`` layers by training FLOPs, as a PR comment."""
    t = report.totals
    inputs = ", ".join(f"{tuple(i.get('shape', []))} {i.get('dtype', '')}".strip() for i in report.inputs) or "-"
    errors = sum(1 for f in report.findings if f.severity.value == "error")
    out = [
        f"### training-profiler audit: `{report.model}`",
        "",
        "| | |",
        "|---|---|",
        f"| Inputs | {_cell(inputs)} |",
        f"| Params | {t.get('params', 0):,} (trainable {t.get('trainable_params', 0):,}) |",
        f"| MACs (forward) | {human_count(t.get('macs'))} |",
        f"| FLOPs forward / backward | {human_count(t.get('flops_forward'))} / {human_count(t.get('flops_backward'))} |",
        f"| Peak memory (training step) | {_memory_line(report)} |",
        f"| Capture | `{report.capture.path}` |",
        "",
        f"#### Findings ({len(report.findings)}, {errors} error{'s' if errors != 1 else ''})",
        "",
        findings_to_markdown(report.findings).rstrip("\n"),
    ]
    if report.rule_errors:
        out += ["", "**Rules that failed to run** (their findings are missing): "
                + "; ".join(f"{e['code']}: {_cell(e['error'])}" for e in report.rule_errors)]
    layers = sorted(report.layers, key=lambda r: -(r.flops_forward + r.flops_backward))[:top]
    layers = [r for r in layers if r.flops_forward + r.flops_backward > 0 or r.params > 0]
    if layers:
        out += ["", f"#### Top {len(layers)} layers by training FLOPs", "",
                "| Layer | Op | Output shape | Params | FLOPs fwd | FLOPs bwd |", "|---|---|---|---|---|---|"]
        for r in layers:
            shape = "x".join(str(s) for s in r.output_shape) if r.output_shape else "-"
            out.append(f"| `{_cell(r.name)}` | {_cell(r.op)} | {shape} | {r.params:,} | "
                       f"{human_count(r.flops_forward)} | {human_count(r.flops_backward)} |")
    return "\n".join(out) + "\n"


def audit_to_json(report) -> str:
    """The documented JSON (docs/audit-report.schema.json); ``training-profiler diff`` reads it."""
    return report.to_json(indent=2) + "\n"


def audit_to_sarif(report) -> str:
    """SARIF 2.1.0 with one result per finding, located at the model's source."""
    from ..fx_audit.rules import all_rules

    totals = {k: v for k, v in report.totals.to_dict().items() if isinstance(v, (int, float, str))}
    properties = {"model": report.model, "totals": totals}
    if report.rule_errors:
        properties["rule_errors"] = report.rule_errors
    return findings_to_sarif(report.findings, rules=all_rules(), tool_name="training-profiler audit",
                             run_properties=properties)


def render_audit(report, fmt: str) -> str:
    if fmt == "markdown":
        return audit_to_markdown(report)
    if fmt == "json":
        return audit_to_json(report)
    if fmt == "sarif":
        return audit_to_sarif(report)
    raise ValueError(f"unknown audit report format {fmt!r}: use one of {', '.join(AUDIT_FORMATS)}")
