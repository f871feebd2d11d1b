"""`training-profiler demo`: run every product on the built-in failure museum.

Each section prints what its tool reports and returns how many museum examples it failed to catch;
the demo exits 1 when any was missed, so a broken demo shows up in CI.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["MUSEUM", "audit_museum", "museum_models", "register", "run_demo"]

MUSEUM = Path(__file__).resolve().parent.parent / "examples" / "failure_museum"


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="lint, audit and monitor the examples in examples/failure_museum")
    demo.add_argument("--museum", default=str(MUSEUM), help="folder with the failure museum (default: the repo's)")
    demo.set_defaults(run=run_demo)


def _section(title: str) -> None:
    print(f"\n{'=' * 78}\n{title}\n{'=' * 78}")


def _lint(museum: Path) -> int:
    from .formats import findings_to_text
    from .linter import lint_paths

    amp_dir = museum / "amp"
    try:  # paths in the report relative to where the user stands, as flake8 prints them
        amp_dir = amp_dir.relative_to(Path.cwd())
    except ValueError:
        pass
    findings = lint_paths([str(amp_dir)])
    sys.stdout.write(findings_to_text(findings))
    caught = {Path(f.path).name for f in findings}
    return sum(1 for path in (museum / "amp").glob("*.py") if path.name not in caught)


def _audit_zoo(museum: Path) -> int:
    """ResNet-18 from the zoo at batch 8, one row per top-level module (nothing to catch)."""
    try:
        import torch
    except ImportError:
        print("(skipped: the audit needs torch; pip install 'training-profiler[audit]')")
        return 0
    from .fx_audit.capture import build_model
    from .fx_audit.engine import audit
    from .fx_audit.table import render_table
    from .fx_audit.zoo import resnet18_like

    print("$ training-profiler audit training_profiler.fx_audit.zoo:resnet18_like --input 8,3,224,224 --depth 1\n")
    report = audit(build_model(resnet18_like), torch.empty(8, 3, 224, 224, device="meta"))
    report.model = "resnet18_like"
    sys.stdout.write(render_table(report, depth=1))
    return 0


def museum_models(folder: str | os.PathLike) -> list[tuple[str, Callable[[], Any], list[tuple[int, ...]], str]]:
    """(name, build, input shapes, first docstring line) for each ``*.py`` of ``folder``."""
    from .inputs import import_user_module

    out = []
    for path in sorted(Path(folder).glob("*.py")):
        module = import_user_module(str(path))
        summary = (module.__doc__ or "").strip().splitlines()[0].removeprefix("Failure museum: ")
        out.append((path.stem, module.build, [tuple(s) for s in module.INPUTS], summary))
    return out


def audit_museum(folder: str | os.PathLike) -> dict[str, Any]:
    """Audit every museum model on the meta device (no weights are allocated): name -> AuditReport."""
    import torch

    from .fx_audit.review import audit_model, build

    reports = {}
    for name, factory, shapes, _ in museum_models(folder):
        reports[name] = audit_model(build(factory), [torch.empty(s, device="meta") for s in shapes], factory=factory,
                                    name=name)
    return reports


def _audit_museum(museum: Path) -> int:
    """Each museum model and the rules that catch it; a model with no error or warning is a miss."""
    from .findings import Severity
    from .formats import findings_to_text

    folder = museum / "models"
    summaries = {name: summary for name, _, _, summary in museum_models(folder)}
    missed = 0
    for name, report in audit_museum(folder).items():
        print(f"\n--- {name}: {summaries[name]}")
        shown = [f for f in report.findings if f.severity is not Severity.INFO]
        sys.stdout.write(findings_to_text(shown))
        missed += not shown
    return missed


def _monitor(museum: Path) -> int:
    from .runtime.monitor import run_museum_demo

    return run_museum_demo(museum)


def _precision(museum: Path) -> int:
    from .runtime.cli import print_bbox_demo

    print_bbox_demo(museum)
    return 0


def _html_reports(museum: Path) -> int:
    """An audit report and a monitor report of the museum, as HTML files to open in a browser."""
    import logging
    import tempfile

    import torch

    from .formats.html import audit_to_html
    from .fx_audit.review import audit_model, build
    from .inputs import import_user_module

    folder = Path(tempfile.gettempdir()) / "training-profiler-demo"
    folder.mkdir(exist_ok=True)
    name, factory, shapes, _ = next(m for m in museum_models(museum / "models") if m[0] == "conv_into_huge_linear")
    report = audit_model(build(factory), [torch.empty(s, device="meta") for s in shapes], factory=factory, name=name)
    audit_path = folder / f"audit-{name}.html"
    audit_path.write_text(audit_to_html(report), encoding="utf-8")
    logger = logging.getLogger("training_profiler")
    was_disabled, logger.disabled = logger.disabled, True  # section 4 printed these alerts already
    try:
        monitor = import_user_module(str(museum / "runtime" / "lr_too_high.py")).run(steps=400, high_lr=2.0)
    finally:
        logger.disabled = was_disabled
    monitor_path = monitor.report(folder / "monitor-lr_too_high.html")
    print(f"audit report:   {audit_path}\nmonitor report: {monitor_path}")
    return 0


SECTIONS = (
    ("1. Linter: AMP pitfalls in examples/failure_museum/amp/ (training-profiler lint)", _lint),
    ("2. Graph audit: ResNet-18 from the model zoo, nothing allocated (training-profiler audit)", _audit_zoo),
    ("3. Auditor: architecture failures in examples/failure_museum/models/ (on meta, nothing allocated)", _audit_museum),
    ("4. Monitor: @watch_training on the runs in examples/failure_museum/runtime/", _monitor),
    ("5. Precision: the bbox tensor and a transformer with an fp16-unsafe exp (analyze_tensor, compare_precision)",
     _precision),
    ("6. HTML reports: open these in a browser (audit --format html, monitor.report())", _html_reports),
)


def run_demo(args: argparse.Namespace) -> int:
    museum = Path(args.museum)
    if not museum.is_dir():
        print(f"training-profiler demo: no failure museum at {museum}; run it from a clone of the repository "
              "or pass --museum PATH", file=sys.stderr)
        return 2
    missed = 0
    for title, section in SECTIONS:
        _section(title)
        missed += section(museum)
    if missed:
        print(f"\ntraining-profiler demo: {missed} museum example(s) not caught by the tool they exist to show",
              file=sys.stderr)
        return 1
    return 0
