"""`training-profiler demo`: run every product on the built-in failure museum."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MUSEUM = Path(__file__).resolve().parent.parent / "examples" / "failure_museum"


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="lint, audit and monitor the examples in examples/failure_museum")
    demo.add_argument("--museum", default=str(MUSEUM), help="folder with the failure museum (default: the repo's)")
    demo.set_defaults(run=run_demo)


def _section(title: str) -> None:
    print(f"\n{'=' * 78}\n{title}\n{'=' * 78}")


def run_demo(args: argparse.Namespace) -> int:
    museum = Path(args.museum)
    if not museum.is_dir():
        print(f"training-profiler demo: no failure museum at {museum}; run it from a clone of the repository "
              "or pass --museum PATH", file=sys.stderr)
        return 2
    from .formats import findings_to_text
    from .linter import lint_paths

    _section("1. Linter: AMP pitfalls in examples/failure_museum/amp/ (training-profiler lint)")
    amp_dir = museum / "amp"
    try:  # paths in the report relative to where the user stands, as flake8 prints them
        amp_dir = amp_dir.relative_to(Path.cwd())
    except ValueError:
        pass
    findings = lint_paths([str(amp_dir)])
    sys.stdout.write(findings_to_text(findings))

    _section("2. Graph audit: ResNet-18 from the model zoo, nothing allocated (training-profiler audit)")
    from .fx_audit.cli import demo_audit
    demo_audit()

    from .fx_audit.review import demo_museum

    _section("3. Auditor: architecture failures in examples/failure_museum/models/ (on meta, nothing allocated)")
    demo_museum(museum / "models")

    _section("4. Monitor: @watch_training on the runs in examples/failure_museum/runtime/")
    from .runtime.monitor import run_museum_demo

    run_museum_demo(museum)

    from .runtime.cli import print_bbox_demo

    _section("5. Precision: the bbox tensor and a transformer with an fp16-unsafe exp (analyze_tensor, compare_precision)")
    print_bbox_demo(museum)
    return 0
