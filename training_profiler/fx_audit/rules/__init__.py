"""Architecture rules FXA101-FXA109 over the engine's records.

Each rule is one :class:`AuditRule` in the module named below: its metadata (a
:class:`~training_profiler.findings.Rule` with ``bad``/``good`` example models that the generic
test audits) and, right below it, its checker registered with ``@register(FXA1nn)``. Checkers
read the torch-free :class:`LayerRecord` list and totals; FXA105 also reads the real module
weights. This package imports without torch (the rules reference is generated from it); torch is
imported inside the checkers that need it. A checker that raises does not stop the audit: its
failure is recorded in ``report.rule_errors`` and the other rules still run.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...findings import Finding, Rule
from ..records import AuditReport
from .base import REGISTRY, AuditConfig, AuditRule, Context, Graph, Locator

__all__ = ["AuditConfig", "AuditRule", "all_rules", "audit_rules", "check_report", "rule",
           "FXA101", "FXA102", "FXA103", "FXA104", "FXA105", "FXA106", "FXA107", "FXA108", "FXA109"]

_RULE_MODULES = (
    "layers",  # FXA101 oversized-linear, FXA102 large-conv-kernel, FXA107 bias-before-batchnorm
    "depth",  # FXA103 deep-plain-stack, FXA104 missing-normalization
    "initialization",  # FXA105 init-mismatch
    "budget",  # FXA106 memory-peak
    "training",  # FXA108 unused-parameters, FXA109 double-softmax
)
for _name in _RULE_MODULES:
    importlib.import_module(f"{__name__}.{_name}")

from .budget import FXA106  # noqa: E402
from .depth import FXA103, FXA104  # noqa: E402
from .initialization import FXA105  # noqa: E402
from .layers import FXA101, FXA102, FXA107  # noqa: E402
from .training import FXA108, FXA109  # noqa: E402


def audit_rules() -> tuple[AuditRule, ...]:
    """Every registered rule (metadata + checker), sorted by code."""
    return tuple(REGISTRY[code] for code in sorted(REGISTRY))


def all_rules() -> tuple[Rule, ...]:
    """Metadata of every audit rule, sorted by code (a provider for ``docs/rules.md``)."""
    return tuple(r.rule for r in audit_rules())


def rule(code: str) -> Rule:
    if code not in REGISTRY:
        raise ValueError(f"unknown audit rule {code!r}: use one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[code].rule


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:300]


def check_report(report: AuditReport, model: Any = None, config: AuditConfig | None = None) -> list[Finding]:
    """Run every architecture rule on ``report`` (and ``model``, for FXA105 and source
    locations); returns the findings sorted by severity, then code. Checks that could not run
    leave a line in ``report.capture.notes``; a rule that raises leaves ``{"code", "error"}`` in
    ``report.rule_errors`` and no findings, and the other rules still run."""
    if config is None:
        config = AuditConfig()
    if not isinstance(config, AuditConfig):
        raise TypeError(f"config must be an AuditConfig, got {type(config).__name__}: build one with AuditConfig(...)")
    ctx = Context(report, Graph(report.layers), config, model, Locator(model, report))
    findings: list[Finding] = []
    errors: list[dict[str, str]] = []
    for audit_rule in audit_rules():
        try:
            findings.extend(list(audit_rule.check(ctx)))
        except Exception as exc:  # one broken rule must not hide the others' findings
            errors.append({"code": audit_rule.code, "error": _error_line(exc)})
    report.rule_errors = errors
    return sorted(findings, key=lambda f: (-f.severity.rank, f.code, f.location.module or ""))
