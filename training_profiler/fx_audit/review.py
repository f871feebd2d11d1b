"""Audits for code review: the engine's records plus the architecture rules, for one model
(:func:`audit_model`) or for every model a ``pyproject.toml`` declares (:func:`run_config`,
``training-profiler audit --config``; the declarations are read by :mod:`.config`).

Imports without torch; torch (and the engine) are imported inside the functions.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from ..findings import Finding, Severity
from ..formats.audit import audit_to_markdown
from ..inputs import load_factory
from ..units import human_bytes, human_count
from .config import Budget, ModelSpec, check_budget, load_config
from .diff import ReportDiff, diff_reports
from .records import AuditReport
from .rules import AuditConfig

__all__ = ["architecture_findings", "audit_model", "build", "run_config",
           # kept importable from here: they moved to .config and .diff
           "Budget", "ModelSpec", "ReportDiff", "check_budget", "diff_reports", "load_config"]


def build(factory: Callable[[], Any], real_weights: bool = False):
    """The model from ``factory``: on the meta device (nothing allocated), or on CPU with real weights."""
    from .capture import build_model

    return factory() if real_weights else build_model(factory)


def audit_model(model: Any, inputs: Any, *, config: AuditConfig | None = None, optimizer: str = "adam",
                amp: str | None = None, factory: Callable | None = None, name: str | None = None,
                memory: bool = True, memory_budget: int | None = None, target: str | None = None,
                parallel: str | None = None, world_size: int = 1) -> AuditReport:
    """Audit ``model`` with the engine and run the architecture rules on the result.

    ``factory``: where the model was built, used as the source location of findings that no
    user-defined module class encloses (e.g. a model made of nn.Sequential). ``memory_budget``
    (bytes) also solves for the largest batch that fits (``totals["max_batch_size"]``).
    ``parallel``/``world_size``: a per-rank plan (see ``fx_audit.parallel``).
    """
    from . import audit

    report = audit(model, inputs, optimizer=optimizer, amp=amp, memory=memory, memory_budget=memory_budget, rules=False,
                   target=target, parallel=parallel, world_size=world_size)
    if name:
        report.model = name
    report.findings = architecture_findings(report, model, config, factory)
    return report


def architecture_findings(report: AuditReport, model: Any, config: AuditConfig | None = None,
                          factory: Callable | None = None) -> list[Finding]:
    """The FXA1xx findings of ``report``; ``factory`` becomes the report's source location when
    the model's own class is a library class (an nn.Sequential built by a function)."""
    from .rules import check_report

    source = report.source.get("file") or ""
    if factory is not None and (not source or f"{os.sep}torch{os.sep}" in source):
        factory = inspect.unwrap(factory)  # load_factory's error guard
        try:
            report.source = {"file": inspect.getsourcefile(factory), "line": inspect.getsourcelines(factory)[1]}
        except (OSError, TypeError):
            pass
    return check_report(report, model, config)


def _audit_spec(spec: ModelSpec, config: AuditConfig, base: Path) -> AuditReport:
    factory = load_factory(spec.factory, base)
    model = build(factory, spec.real_weights)
    device = "cpu" if spec.real_weights else "meta"
    return audit_model(model, [i.make(device) for i in spec.inputs], config=config, optimizer=spec.optimizer,
                       amp=spec.amp, factory=factory, name=spec.name, target=spec.target, parallel=spec.parallel,
                       world_size=spec.world_size)


def run_config(path: str | os.PathLike, fmt: str = "text", fail_level: Severity | None = None) -> int:
    """Audit every model of ``[tool.training-profiler.audit.models]``; 1 when a budget is exceeded
    or, with ``fail_level``, a finding of at least that severity is reported."""
    from ..formats import findings_to_text

    config, specs = load_config(path)
    if not specs:
        raise ValueError(f"{str(path)!r} declares no models: add a [tool.training-profiler.audit.models.NAME] table")
    base = Path(path).resolve().parent
    failed = False
    reports = {}
    for spec in specs:
        report = _audit_spec(spec, config, base)
        violations = check_budget(report, spec.budget)
        failed = failed or bool(violations) or (
            fail_level is not None and any(f.severity.rank >= fail_level.rank for f in report.findings))
        reports[spec.name] = report
        if fmt in ("json", "sarif"):
            continue
        t = report.totals
        if fmt == "markdown":
            sys.stdout.write(audit_to_markdown(report))
            if violations:
                sys.stdout.write("\n**Budget exceeded:** " + "; ".join(violations) + "\n")
            sys.stdout.write("\n")
            continue
        print(f"{spec.name} ({spec.factory}): {t.get('params', 0):,} params, "
              f"{human_count((t.get('flops_forward') or 0) + (t.get('flops_backward') or 0))} FLOPs/step, "
              f"peak {human_bytes(t.get('peak_bytes'))}")
        if report.findings:
            sys.stdout.write(findings_to_text(report.findings))
        print("  budget: " + ("; ".join(f"EXCEEDED {v}" for v in violations) if violations else "ok"))
    if fmt == "json":
        sys.stdout.write(json.dumps({n: r.to_dict() for n, r in reports.items()}, indent=2) + "\n")
    elif fmt == "sarif":
        from ..formats.sarif import findings_to_sarif
        from .rules import all_rules

        findings = [f for r in reports.values() for f in r.findings]
        sys.stdout.write(findings_to_sarif(findings, rules=all_rules(), tool_name="training-profiler audit"))
    return 1 if failed else 0
