"""Code review on top of audits: ``diff`` of two reports, ``compare`` of architectures, budgets
from ``pyproject.toml`` (``audit --config``) and the failure-museum tour of the demo.

Configuration (``pyproject.toml``)::

    [tool.training-profiler.audit]            # rule thresholds (AuditConfig), all optional
    max-plain-depth = 20

    [tool.training-profiler.audit.models.resnet]
    factory = "mypkg.models:resnet18"          # module:function, or path/to/file.py:function
    inputs = ["8,3,224,224"]                   # one shape per positional input (or [[8, 3, 224, 224]])
    dtype = "float32"                          # dtype of the example inputs
    optimizer = "adamw"                        # adam | adamw | sgd | sgd-momentum
    amp = "bf16"                               # bf16 | fp16 | pure-bf16 | pure-fp16 (optional)
    real-weights = false                       # build on CPU with real weights (enables FXA105)
    max-params = 12_000_000                    # budgets, all optional
    max-peak-memory = "8GiB"
    max-flops = 2e10                           # forward + backward FLOPs of one training step
    fail-on = ["error"]                        # finding severities that fail the budget

This module imports without torch; torch (and the engine) are imported inside the functions.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..findings import Finding, Severity
from .records import AuditReport
from ..formats.audit import audit_to_markdown, human_bytes, human_count
from ..formats.markdown import _cell
from ..units import parse_bytes
from .rules import AuditConfig

__all__ = [
    "Budget", "ModelSpec", "ReportDiff", "architecture_findings", "audit_model", "audit_museum", "check_budget", "diff_reports",
    "load_config", "load_factory", "register", "run_config",
]

# ---------------------------------------------------------------------------------------------
# Model specs and budgets


@dataclass(frozen=True)
class Budget:
    max_params: int | None = None
    max_peak_memory: int | None = None  # bytes
    max_flops: float | None = None  # forward + backward FLOPs of one step
    fail_on: tuple[Severity, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str
    inputs: tuple[tuple[int, ...], ...]
    dtype: str = "float32"
    optimizer: str = "adam"
    amp: str | None = None
    real_weights: bool = False
    budget: Budget = field(default_factory=Budget)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    """``"8,3,224,224"`` or ``[8, 3, 224, 224]`` -> (8, 3, 224, 224)."""
    from .cli import parse_shape

    if isinstance(value, str):
        return parse_shape(value)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return tuple(value)
    raise ValueError(f"{where}: cannot read input shape {value!r}: write it as \"8,3,224,224\" or [8, 3, 224, 224]")


_SPEC_KEYS = {"factory", "inputs", "dtype", "optimizer", "amp", "real-weights", "max-params", "max-peak-memory",
              "max-flops", "fail-on"}


def _model_spec(name: str, table: dict[str, Any]) -> ModelSpec:
    table = {k.replace("_", "-"): v for k, v in table.items()}
    unknown = set(table) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} in [tool.training-profiler.audit.models.{name}]: "
                         f"use {', '.join(sorted(_SPEC_KEYS))}")
    if "factory" not in table or "inputs" not in table:
        raise ValueError(f"[tool.training-profiler.audit.models.{name}] needs factory = \"module:function\" and inputs = [\"8,3,224,224\"]")
    inputs = table["inputs"]
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    fail_on = table.get("fail-on", [])
    budget = Budget(
        max_params=int(table["max-params"]) if "max-params" in table else None,
        max_peak_memory=parse_bytes(table["max-peak-memory"]) if "max-peak-memory" in table else None,
        max_flops=float(table["max-flops"]) if "max-flops" in table else None,
        fail_on=tuple(Severity.parse(s) for s in ([fail_on] if isinstance(fail_on, str) else fail_on)),
    )
    return ModelSpec(name=name, factory=str(table["factory"]), inputs=tuple(_shape(i, f"models.{name}.inputs") for i in inputs),
                     dtype=str(table.get("dtype", "float32")), optimizer=str(table.get("optimizer", "adam")),
                     amp=table.get("amp"), real_weights=bool(table.get("real-weights", False)), budget=budget)


def load_config(path: str | os.PathLike) -> tuple[AuditConfig, list[ModelSpec]]:
    """Rule thresholds and model specs from ``[tool.training-profiler.audit]`` of ``path``."""
    from ..config import load_tool_config

    section, _ = load_tool_config("audit", path)
    config = AuditConfig.from_mapping(section)
    models = [_model_spec(name, table) for name, table in section.get("models", {}).items()]
    return config, models


def check_budget(report: AuditReport, budget: Budget) -> list[str]:
    """One line per exceeded budget, e.g. ``"max-params: 12,500,000 > 12,000,000"``."""
    t = report.totals
    out = []
    params = t.get("params")
    if budget.max_params is not None and params is not None and params > budget.max_params:
        out.append(f"max-params: {params:,} > {budget.max_params:,}")
    peak = t.get("peak_bytes")
    if budget.max_peak_memory is not None and peak is not None and peak > budget.max_peak_memory:
        out.append(f"max-peak-memory: {human_bytes(peak)} > {human_bytes(budget.max_peak_memory)}")
    flops = (t.get("flops_forward") or 0) + (t.get("flops_backward") or 0)
    if budget.max_flops is not None and flops > budget.max_flops:
        out.append(f"max-flops: {flops:.4g} > {budget.max_flops:.4g}")
    for sev in budget.fail_on:
        count = sum(1 for f in report.findings if f.severity is sev)
        if count:
            out.append(f"fail-on {sev.value}: {count} finding{'s' if count != 1 else ''}")
    return out


# ---------------------------------------------------------------------------------------------
# Loading factories and auditing


def load_factory(spec: str, base_dir: str | os.PathLike | None = None) -> Callable[[], Any]:
    """``"pkg.module:function"`` or ``"path/to/file.py:function"``, resolved from ``base_dir``
    (the config file's folder, put on ``sys.path``) so a repository's own models import from a
    pre-commit hook."""
    from .cli import load_factory as load

    base = Path(base_dir or os.getcwd()).resolve()
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    module_name, sep, attr = spec.rpartition(":")
    if module_name.endswith(".py") and not Path(module_name).is_absolute():
        spec = f"{base / module_name}:{attr}"
    return load(spec)


def _build(factory: Callable[[], Any], real_weights: bool):
    from .capture import build_model

    return factory() if real_weights else build_model(factory)


def audit_model(model: Any, inputs: Any, *, config: AuditConfig | None = None, optimizer: str = "adam",
                amp: str | None = None, factory: Callable | None = None, name: str | None = None,
                memory: bool = True, memory_budget: int | None = None) -> AuditReport:
    """Audit ``model`` with the engine and run the architecture rules on the result.

    ``factory``: where the model was built, used as the source location of findings that no
    user-defined module class encloses (e.g. a model made of nn.Sequential). ``memory_budget``
    (bytes) also solves for the largest batch that fits (``totals["max_batch_size"]``).
    """
    from . import audit

    report = audit(model, inputs, optimizer=optimizer, amp=amp, memory=memory, memory_budget=memory_budget, rules=False)
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
        try:
            report.source = {"file": inspect.getsourcefile(factory), "line": inspect.getsourcelines(factory)[1]}
        except (OSError, TypeError):
            pass
    return check_report(report, model, config)


def _example_inputs(spec: ModelSpec):
    import torch

    try:
        dtype = getattr(torch, spec.dtype)
    except AttributeError:
        raise ValueError(f"unknown dtype {spec.dtype!r} for model {spec.name!r}: use float32, bfloat16, float16, int64, ...") from None
    device = "cpu" if spec.real_weights else "meta"
    if dtype.is_floating_point:
        return [torch.randn(s, dtype=dtype, device=device) if device == "cpu" else torch.empty(s, dtype=dtype, device=device)
                for s in spec.inputs]
    return [torch.zeros(s, dtype=dtype, device=device) for s in spec.inputs]


def run_config(path: str | os.PathLike, fmt: str = "text") -> int:
    """Audit every model of ``[tool.training-profiler.audit.models]``; 1 when a budget is exceeded."""
    from ..formats import findings_to_text

    config, specs = load_config(path)
    if not specs:
        raise ValueError(f"{str(path)!r} declares no models: add a [tool.training-profiler.audit.models.NAME] table")
    base = Path(path).resolve().parent
    failed = False
    reports = {}
    for spec in specs:
        factory = load_factory(spec.factory, base)
        model = _build(factory, spec.real_weights)
        report = audit_model(model, _example_inputs(spec), config=config, optimizer=spec.optimizer, amp=spec.amp,
                             factory=factory, name=spec.name)
        violations = check_budget(report, spec.budget)
        failed = failed or bool(violations)
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


# ---------------------------------------------------------------------------------------------
# diff


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
            out += [f"  [{f.severity.label}] {f.code} {f.location.module or ''}: {f.message}" for f in items]
        if self.new_violations:
            out.append("budget newly exceeded: " + "; ".join(self.new_violations))
        return "\n".join(out) + "\n"

    def to_markdown(self) -> str:
        out = [f"### training-profiler audit diff: `{self.head.model}`", "", "| | base | head | change |", "|---|---:|---:|---:|"]
        for key, label, a, b in self.metrics:
            out.append(f"| {label} | {_fmt(key, a)} | {_fmt(key, b)} | {_change(key, a, b) or '0'} |")
        for title, items in (("New findings", self.new_findings), ("Fixed findings", self.fixed_findings)):
            out += ["", f"#### {title} ({len(items)})", ""]
            out += [f"- **{f.severity.label}** `{f.code}` `{f.location.module or ''}`: {_cell(f.message)}" for f in items] or ["None."]
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


def _read_report(path: str) -> AuditReport:
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


def _budget_for(config_path: str | None, model_name: str | None, report: AuditReport) -> Budget | None:
    if not config_path:
        return None
    _, specs = load_config(config_path)
    if model_name:
        match = [s for s in specs if s.name == model_name]
        if not match:
            raise ValueError(f"no model {model_name!r} in {config_path!r}: use one of {', '.join(s.name for s in specs) or '(none)'}")
        return match[0].budget
    match = [s for s in specs if s.name == report.model] or (specs if len(specs) == 1 else [])
    if not match:
        raise ValueError(f"cannot tell which model of {config_path!r} the reports are for: pass --model NAME")
    return match[0].budget


# ---------------------------------------------------------------------------------------------
# compare


def _compare_rows(specs: list[str], shapes: list[tuple[int, ...]], optimizer: str, amp: str | None,
                  memory: int | None) -> list[dict[str, Any]]:
    import torch

    rows = []
    for spec in specs:
        factory = load_factory(spec)
        model = _build(factory, real_weights=False)
        inputs = [torch.empty(s, device="meta") for s in shapes]
        report = audit_model(model, inputs, optimizer=optimizer, amp=amp, factory=factory, name=spec,
                             memory_budget=memory)
        t = report.totals
        rows.append({"model": spec, "params": t.get("params"), "macs": t.get("macs"),
                     "flops": (t.get("flops_forward") or 0) + (t.get("flops_backward") or 0),
                     "peak_bytes": t.get("peak_bytes"), "max_batch": t.get("max_batch_size", "-"),
                     "findings": sorted({f.code for f in report.findings})})
    return rows


def _compare_table(rows: list[dict[str, Any]], markdown: bool) -> str:
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
    console = Console(width=160, record=True, file=open(os.devnull, "w"))
    console.print(table)
    return console.export_text()


# ---------------------------------------------------------------------------------------------
# Failure museum (demo)


def museum_models(folder: str | os.PathLike) -> list[tuple[str, Callable[[], Any], list[tuple[int, ...]], str]]:
    """(name, build, input shapes, first docstring line) for each ``*.py`` of ``folder``."""
    out = []
    for path in sorted(Path(folder).glob("*.py")):
        module_spec = importlib.util.spec_from_file_location(f"failure_museum_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # inspect finds class sources through sys.modules
        module_spec.loader.exec_module(module)
        summary = (module.__doc__ or "").strip().splitlines()[0].removeprefix("Failure museum: ")
        out.append((path.stem, module.build, [tuple(s) for s in module.INPUTS], summary))
    return out


def audit_museum(folder: str | os.PathLike) -> dict[str, AuditReport]:
    """Audit every museum model on the meta device (no weights are allocated)."""
    import torch

    reports = {}
    for name, build, shapes, _ in museum_models(folder):
        model = _build(build, real_weights=False)
        reports[name] = audit_model(model, [torch.empty(s, device="meta") for s in shapes], factory=build, name=name)
    return reports


def demo_museum(folder: str | os.PathLike) -> None:
    """The demo's audit section: each museum model and the rules that catch it."""
    from ..formats import findings_to_text

    summaries = {name: summary for name, _, _, summary in museum_models(folder)}
    for name, report in audit_museum(folder).items():
        print(f"\n--- {name}: {summaries[name]}")
        sys.stdout.write(findings_to_text([f for f in report.findings if f.severity is not Severity.INFO]))


# ---------------------------------------------------------------------------------------------
# CLI


def register(sub: argparse._SubParsersAction) -> None:
    diff = sub.add_parser("diff", help="what changed between two audit reports (JSON from `audit --format json`)")
    diff.add_argument("base", help="audit report of the base revision (JSON)")
    diff.add_argument("head", help="audit report of the new revision (JSON)")
    diff.add_argument("--format", choices=("text", "markdown"), default="text")
    diff.add_argument("--config", default=None, help="pyproject.toml whose budgets apply: exit 1 when one is newly exceeded")
    diff.add_argument("--model", default=None, help="which [tool.training-profiler.audit.models.NAME] budget to use")
    diff.set_defaults(run=run_diff)

    compare = sub.add_parser("compare", help="side-by-side params, FLOPs, peak memory and max batch of several models")
    compare.add_argument("factories", nargs="+", metavar="MODULE:FACTORY", help="model factories, e.g. mypkg.models:resnet18")
    compare.add_argument("--input", action="append", required=True, metavar="SHAPE",
                         help="example input shape, e.g. 8,3,224,224 (repeat for several inputs)")
    compare.add_argument("--optimizer", default="adam")
    compare.add_argument("--amp", default=None, choices=("bf16", "fp16", "pure-bf16", "pure-fp16"))
    compare.add_argument("--memory", default=None, help="device memory, e.g. 24GiB: adds the largest batch that fits")
    compare.add_argument("--format", choices=("text", "markdown"), default="text")
    compare.set_defaults(run=run_compare)


def _usage(exc: Exception):
    from ..cli import UsageError

    return UsageError(str(exc))


def run_diff(args: argparse.Namespace) -> int:
    try:
        base, head = _read_report(args.base), _read_report(args.head)
        result = diff_reports(base, head, _budget_for(args.config, args.model, head))
    except (ValueError, TypeError) as exc:
        raise _usage(exc) from None
    sys.stdout.write(result.to_markdown() if args.format == "markdown" else result.to_text())
    return 1 if result.new_violations else 0


def run_compare(args: argparse.Namespace) -> int:
    try:
        shapes = [_shape(s, "--input") for s in args.input]
        memory = parse_bytes(args.memory) if args.memory else None
        rows = _compare_rows(args.factories, shapes, args.optimizer, args.amp, memory)
    except (ValueError, TypeError) as exc:
        raise _usage(exc) from None
    sys.stdout.write(_compare_table(rows, markdown=args.format == "markdown"))
    return 0


def run_audit_config(args: argparse.Namespace) -> int:
    """``training-profiler audit --config pyproject.toml``: audit every declared model."""
    fmt = getattr(args, "format", "text")
    try:
        return run_config(args.config, fmt if fmt in ("json", "markdown", "sarif") else "text")
    except (ValueError, TypeError) as exc:
        raise _usage(exc) from None
