"""`training-profiler audit pkg.module:factory --input 8,3,224,224`: audit a model from the shell.

Importable without torch (the parser is built for every subcommand); torch is imported in ``run``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from ..cli import UsageError, load_factory, parse_shape

__all__ = ["demo_audit", "register", "run"]

_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit", help="per-layer params, FLOPs, shapes and training-step memory of a model, without allocating it",
        description="Build the model on the meta device (no memory), capture its graph, count params and "
                    "forward/backward FLOPs per layer and simulate one training step's peak memory.")
    audit.add_argument("model", metavar="MODULE:FACTORY", nargs="?",
                       help="a function or nn.Module class that builds the model: pkg.module:factory or path/file.py:factory")
    audit.add_argument("--input", action="append", default=[], metavar="SHAPE",
                       help="shape of one positional input, e.g. 8,3,224,224 (repeat for several inputs; "
                            "optional for the built-in zoo models)")
    audit.add_argument("--dtype", action="append", default=[], choices=_DTYPES,
                       help="dtype of the inputs: once for all, or once per --input (default float32; token ids: int64)")
    audit.add_argument("--batch-size", type=int, default=None, help="replace the leading dimension of every input")
    audit.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "sgd-momentum"),
                       help="optimizer of the simulated training step (default adam)")
    audit.add_argument("--amp", default=None, choices=("bf16", "fp16", "pure-bf16", "pure-fp16"),
                       help="autocast precision (bf16/fp16) or pure low-precision weights")
    audit.add_argument("--memory", default=None, metavar="BUDGET",
                       help="memory budget, e.g. 24GiB: report the largest batch that fits; exit 1 if the step does not")
    audit.add_argument("--no-memory", action="store_true", help="skip the training-step memory simulation (faster)")
    audit.add_argument("--format", choices=("table", "json", "markdown", "sarif"), default="table")
    audit.add_argument("--config", default=None, metavar="PYPROJECT",
                       help="audit every [tool.training-profiler.audit.models.NAME] of this pyproject.toml; exit 1 "
                            "when a budget is exceeded (replaces MODULE:FACTORY)")
    audit.add_argument("--depth", type=int, default=None, metavar="N",
                       help="table: one row per module path cut to N components (e.g. 2: layers.0, layers.1, ...)")
    audit.add_argument("--all", action="store_true", help="table: also list zero-cost nodes (views, elementwise ops)")
    audit.set_defaults(run=run)


def _example_inputs(args: argparse.Namespace, factory: Callable[..., Any]) -> tuple:
    import torch

    if not args.input:
        from .zoo import LLAMA_7B, ZOO

        for entry in (*ZOO.values(), LLAMA_7B):
            if entry.factory is factory:
                with torch.device("meta"):
                    return entry.make_inputs(1)
        raise UsageError("--input is required: give the shape of each input, e.g. --input 8,3,224,224")
    if len(args.dtype) not in (0, 1, len(args.input)):
        raise UsageError(f"got {len(args.dtype)} --dtype for {len(args.input)} --input: give one for all or one per input")
    dtypes = args.dtype or ["float32"]
    if len(dtypes) == 1:
        dtypes = dtypes * len(args.input)
    return tuple(torch.empty(parse_shape(shape), dtype=getattr(torch, dtype), device="meta")
                 for shape, dtype in zip(args.input, dtypes))


def run(args: argparse.Namespace) -> int:
    if args.config:
        from .review import run_audit_config

        return run_audit_config(args)
    if not args.model:
        raise UsageError("give the model as MODULE:FACTORY, or --config pyproject.toml")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("the audit needs torch: pip install 'training-profiler[audit]'") from None
    from rich.console import Console

    from .capture import build_model
    from .engine import audit
    from ..units import parse_bytes
    from .table import render_table

    budget = None
    if args.memory is not None:
        try:
            budget = parse_bytes(args.memory)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    factory = load_factory(args.model)
    inputs = _example_inputs(args, factory)
    try:
        model = build_model(factory)
    except TypeError as exc:
        raise UsageError(str(exc)) from None

    status_console = Console(file=sys.stderr)
    with status_console.status(f"auditing {args.model}", spinner="dots") as status:
        def progress(done: int, total: int, layer: str) -> None:
            status.update(f"auditing {args.model}: {done}/{total} nodes ({layer})"
                          + (", then the training-step memory simulation" if done == total and not args.no_memory else ""))

        try:
            report = audit(model, inputs, optimizer=args.optimizer, amp=args.amp, batch_size=args.batch_size,
                           memory=not args.no_memory, memory_budget=budget, progress=progress, rules=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    report.model = args.model
    from .review import architecture_findings
    from .rules import AuditConfig

    report.findings += architecture_findings(report, model, AuditConfig(memory_budget=budget), factory)
    if args.format in ("markdown", "sarif"):
        from ..formats.audit import render_audit

        sys.stdout.write(render_audit(report, args.format))
    elif args.format == "json":
        sys.stdout.write(report.to_json() + "\n")
    else:
        width = Console().width if sys.stdout.isatty() else 120
        sys.stdout.write(render_table(report, depth=args.depth, all_nodes=args.all, width=max(width, 100),
                                      color=sys.stdout.isatty()))
        if report.findings:
            from ..formats import findings_to_text

            sys.stdout.write("\n" + findings_to_text(report.findings))
    if budget is not None and report.totals.get("peak_bytes") is not None and report.totals["peak_bytes"] > budget:
        return 1
    return 0


def demo_audit() -> None:
    """The demo's audit section: ResNet-18 from the zoo at batch 8, one row per top-level module."""
    try:
        import torch
    except ImportError:
        print("(skipped: the audit needs torch; pip install 'training-profiler[audit]')")
        return
    from .capture import build_model
    from .engine import audit
    from .table import render_table
    from .zoo import resnet18_like

    print("$ training-profiler audit training_profiler.fx_audit.zoo:resnet18_like --input 8,3,224,224 --depth 1\n")
    report = audit(build_model(resnet18_like), torch.empty(8, 3, 224, 224, device="meta"))
    report.model = "resnet18_like"
    sys.stdout.write(render_table(report, depth=1))
