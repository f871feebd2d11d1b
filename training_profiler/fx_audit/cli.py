"""`training-profiler audit | diff | compare`: the auditor from the shell.

Importable without torch (the parser is built for every subcommand); torch is imported in ``run_*``.
Every ``--input`` is one token ``SHAPE[:DTYPE|:intN]`` (:mod:`training_profiler.inputs`).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any, Callable

from ..findings import SEVERITY_NAMES, Severity
from ..inputs import DTYPES, UsageError, load_factory, load_input, parse_input_spec, require_torch
from ..units import parse_bytes

__all__ = ["register", "run_audit", "run_compare", "run_diff", "run_plan"]

_INPUT_HELP = ("one positional input (repeat for several): SHAPE such as 8,3,224,224 (float32), SHAPE:DTYPE such "
               "as 8,1024:int64, SHAPE:intN such as 8,1024:int1000 (token ids in [0, N)), or a .pt file")
_AMP = ("bf16", "fp16", "pure-bf16", "pure-fp16")
_TARGETS = ("cpu", "cuda")  # fx_audit/memory.py TARGETS (the CLI imports no torch at parse time)
_TARGET_HELP = ("device the memory simulation predicts (default: cuda for models built on meta, "
                "cpu for --config models with real-weights)")


def register(sub: argparse._SubParsersAction) -> None:
    _register_plan(sub)
    audit = sub.add_parser(
        "audit", help="per-layer params, FLOPs, shapes and training-step memory of a model, without allocating it",
        description="Build the model on the meta device (no memory), capture its graph, count params and "
                    "forward/backward FLOPs per layer and simulate one training step's peak memory.")
    audit.add_argument("model", metavar="MODULE:FACTORY", nargs="?",
                       help="a function or nn.Module class that builds the model: pkg.module:factory or path/file.py:factory")
    audit.add_argument("--input", action="append", default=[], metavar="SPEC",
                       help=_INPUT_HELP + " (optional for the built-in zoo models)")
    audit.add_argument("--dtype", action="append", default=[], choices=DTYPES, help=argparse.SUPPRESS)  # deprecated
    audit.add_argument("--batch-size", type=int, default=None, help="replace the leading dimension of every input")
    audit.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd", "sgd-momentum", "adam-fused",
                                                               "adamw-fused"),
                       help="optimizer of the simulated training step (default adam)")
    audit.add_argument("--amp", default=None, choices=_AMP, help="autocast precision (bf16/fp16) or pure low-precision weights")
    audit.add_argument("--memory", default=None, metavar="BUDGET",
                       help="memory budget, e.g. 24GiB: report the largest batch that fits; exit 1 if the step does not")
    audit.add_argument("--no-memory", action="store_true", help="skip the training-step memory simulation (faster)")
    audit.add_argument("--target", default=None, choices=_TARGETS, help=_TARGET_HELP)
    audit.add_argument("--fail-level", choices=SEVERITY_NAMES, default=None,
                       help="exit 1 when a finding of at least this severity is reported (default: error; "
                            "with --config only when given)")
    audit.add_argument("--format", choices=("table", "json", "markdown", "sarif", "html"), default="table")
    audit.add_argument("-o", "--output", default=None, metavar="FILE", help="write the report to FILE (default: stdout)")
    audit.add_argument("--config", default=None, metavar="PYPROJECT",
                       help="audit every [tool.training-profiler.audit.models.NAME] of this pyproject.toml; exit 1 "
                            "when a budget is exceeded (replaces MODULE:FACTORY)")
    audit.add_argument("--depth", type=int, default=None, metavar="N",
                       help="table: one row per module path cut to N components (e.g. 2: layers.0, layers.1, ...)")
    audit.add_argument("--all", action="store_true", help="table: also list zero-cost nodes (views, elementwise ops)")
    audit.set_defaults(run=run_audit)

    diff = sub.add_parser("diff", help="what changed between two audit reports (JSON from `audit --format json`)")
    diff.add_argument("base", help="audit report of the base revision (JSON)")
    diff.add_argument("head", help="audit report of the new revision (JSON)")
    diff.add_argument("--format", choices=("text", "markdown", "html"), default="text")
    diff.add_argument("-o", "--output", default=None, metavar="FILE", help="write the report to FILE (default: stdout)")
    diff.add_argument("--config", default=None, help="pyproject.toml whose budgets apply: exit 1 when one is newly exceeded")
    diff.add_argument("--model", default=None, help="which [tool.training-profiler.audit.models.NAME] budget to use")
    diff.set_defaults(run=run_diff)

    compare = sub.add_parser("compare", help="side-by-side params, FLOPs, peak memory and max batch of several models")
    compare.add_argument("factories", nargs="+", metavar="MODULE:FACTORY", help="model factories, e.g. mypkg.models:resnet18")
    compare.add_argument("--input", action="append", required=True, metavar="SPEC", help=_INPUT_HELP)
    compare.add_argument("--optimizer", default="adam")
    compare.add_argument("--amp", default=None, choices=_AMP)
    compare.add_argument("--memory", default=None, help="device memory, e.g. 24GiB: adds the largest batch that fits")
    compare.add_argument("--target", default=None, choices=_TARGETS, help=_TARGET_HELP)
    compare.add_argument("--format", choices=("text", "markdown", "html"), default="text")
    compare.add_argument("-o", "--output", default=None, metavar="FILE", help="write the report to FILE (default: stdout)")
    compare.set_defaults(run=run_compare)


def _register_plan(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan", help="per-rank memory of DDP, ZeRO-1 and FSDP on N GPUs, the largest micro-batch, the strategy that fits",
        description="Simulate one training step per distributed strategy on a fake process group (no GPU, no "
                    "memory): per-rank peak at the given micro-batch, the largest micro-batch that fits, "
                    "communication per step, and a recommendation.")
    plan.add_argument("model", metavar="MODULE:FACTORY", help="model factory, e.g. mypkg.models:llama")
    plan.add_argument("--input", action="append", default=[], metavar="SPEC", help=_INPUT_HELP + " (one rank's micro-batch)")
    plan.add_argument("--gpus", type=int, required=True, metavar="N", help="number of ranks (world size)")
    plan.add_argument("--gpu-memory", default=None, metavar="BYTES", help="memory per GPU, e.g. 80GiB")
    plan.add_argument("--optimizer", default="adamw", choices=("adam", "adamw", "sgd", "sgd-momentum"))
    plan.add_argument("--amp", default=None, choices=_AMP, help="autocast precision; FSDP rows use it as param dtype")
    plan.add_argument("--target", default=None, choices=_TARGETS, help=_TARGET_HELP)
    plan.add_argument("--no-checkpointing", action="store_true", help="skip the activation-checkpointing rows")
    plan.add_argument("--format", choices=("table", "json", "markdown", "html"), default="table")
    plan.add_argument("-o", "--output", default=None, metavar="FILE", help="write the plan to FILE (default: stdout)")
    plan.set_defaults(run=run_plan, dtype=[])


def run_plan(args: argparse.Namespace) -> int:
    require_torch("plan")
    from .capture import build_model
    from .parallel import advise_checkpointing, plan_strategies, render_plan, reusing_simulations

    if args.gpus < 1:
        raise UsageError(f"--gpus {args.gpus} must be at least 1")
    budget = _usage(lambda: parse_bytes(args.gpu_memory)) if args.gpu_memory is not None else None
    factory = load_factory(args.model)
    inputs = _example_inputs(args, factory)
    model = _usage(lambda: build_model(factory))
    with reusing_simulations():  # the advisor reuses the plan's steps (no checkpoint, every block)
        plan = _usage(lambda: plan_strategies(model, inputs, world_size=args.gpus, budget=budget,
                                              optimizer=args.optimizer, amp=args.amp,
                                              checkpointing=not args.no_checkpointing, target=args.target))
        plan.model = args.model
        if budget is not None and plan.recommendation is None and args.gpus > 1:
            plan.checkpoint_advice = _usage(lambda: advise_checkpointing(
                model, inputs, budget, optimizer=args.optimizer, amp=args.amp, parallel="fsdp", world_size=args.gpus,
                target=args.target))
        elif budget is not None and plan.recommendation is not None and "ckpt" in plan.recommendation:
            best = next(r for r in plan.rows if r.strategy == plan.recommendation)
            options = {k: v for k, v in best.options.items() if k != "checkpoint"}
            plan.checkpoint_advice = _usage(lambda: advise_checkpointing(
                model, inputs, budget, optimizer=args.optimizer,
                amp=None if options.get("mixed_precision") else args.amp, world_size=args.gpus, target=args.target,
                **options))
    if args.format == "html":
        from ..formats.html import plan_to_html

        strategies = {r.strategy: [rank["breakdown"] for rank in r.per_rank] for r in plan.rows}
        _emit(args, plan_to_html(f"plan: {args.model} on {args.gpus} ranks", strategies, budget,
                                 {r.strategy: r.max_micro_batch for r in plan.rows}))
    else:
        _emit(args, render_plan(plan, args.format))
    return 0 if budget is None or plan.recommendation is not None else 1


def _usage(call: Callable[[], Any]) -> Any:
    """``call()``, with a ValueError/TypeError from reading the user's input as a one-line UsageError."""
    try:
        return call()
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def _emit(args: argparse.Namespace, text: str) -> None:
    """The report to ``--output`` (said on stderr) or stdout."""
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _input_dtypes(args: argparse.Namespace) -> list[str]:
    """The dtype of each --input that names none: the deprecated --dtype, else float32."""
    if not args.dtype:
        return ["float32"] * len(args.input)
    print("training-profiler audit: warning: --dtype is deprecated: write the dtype into the input, "
          "e.g. --input 8,1024:int64", file=sys.stderr)
    if len(args.dtype) not in (1, len(args.input)):
        raise UsageError(f"got {len(args.dtype)} --dtype for {len(args.input)} --input: give one for all or one per input")
    return args.dtype * len(args.input) if len(args.dtype) == 1 else args.dtype


def _example_inputs(args: argparse.Namespace, factory: Callable[..., Any]) -> tuple:
    import torch

    if not args.input:
        from .zoo import LLAMA_7B, ZOO

        for entry in (*ZOO.values(), LLAMA_7B):
            if entry.factory is inspect.unwrap(factory):
                with torch.device("meta"):
                    return entry.make_inputs(1)
        raise UsageError("--input is required: give the shape of each input, e.g. --input 8,3,224,224")
    return tuple(load_input(token, "meta", dtype) for token, dtype in zip(args.input, _input_dtypes(args)))


def run_audit(args: argparse.Namespace) -> int:
    if args.config:
        from .review import run_config

        fmt = args.format if args.format in ("json", "markdown", "sarif") else "text"
        fail_level = Severity.parse(args.fail_level) if args.fail_level else None  # budgets decide by default
        return _usage(lambda: run_config(args.config, fmt, fail_level=fail_level))
    if not args.model:
        raise UsageError("give the model as MODULE:FACTORY, or --config pyproject.toml")
    require_torch("the audit")
    from rich.console import Console

    from .capture import build_model
    from .engine import audit
    from .review import architecture_findings
    from .rules import AuditConfig
    from .table import render_table

    fail_level = Severity.parse(args.fail_level or "error")
    budget = _usage(lambda: parse_bytes(args.memory)) if args.memory is not None else None
    factory = load_factory(args.model)
    inputs = _example_inputs(args, factory)
    model = _usage(lambda: build_model(factory))

    status_console = Console(file=sys.stderr)
    with status_console.status(f"auditing {args.model}", spinner="dots") as status:
        def progress(done: int, total: int, layer: str) -> None:
            status.update(f"auditing {args.model}: {done}/{total} nodes ({layer})"
                          + (", then the training-step memory simulation" if done == total and not args.no_memory else ""))

        report = _usage(lambda: audit(model, inputs, optimizer=args.optimizer, amp=args.amp, batch_size=args.batch_size,
                                      memory=not args.no_memory, memory_budget=budget, progress=progress, rules=False,
                                      target=args.target))
    report.model = args.model
    report.findings += architecture_findings(report, model, AuditConfig(memory_budget=budget), factory)
    if args.format in ("markdown", "sarif"):
        from ..formats.audit import render_audit

        _emit(args, render_audit(report, args.format))
    elif args.format == "json":
        _emit(args, report.to_json() + "\n")
    elif args.format == "html":
        from ..formats.html import audit_to_html

        _emit(args, audit_to_html(report))
    else:
        tty = sys.stdout.isatty() and not args.output
        text = render_table(report, depth=args.depth, all_nodes=args.all, width=max(Console().width if tty else 120, 100),
                            color=tty)
        if report.findings:
            from ..formats import findings_to_text

            text += "\n" + findings_to_text(report.findings)
        _emit(args, text)
    peak = report.totals.get("peak_bytes")
    over_budget = budget is not None and peak is not None and peak > budget
    return 1 if over_budget or any(f.severity.rank >= fail_level.rank for f in report.findings) else 0


def run_diff(args: argparse.Namespace) -> int:
    from .config import budget_for
    from .diff import diff_reports, read_report

    def diff():
        base, head = read_report(args.base), read_report(args.head)
        return diff_reports(base, head, budget_for(args.config, args.model, head))

    result = _usage(diff)
    if args.format == "html":
        from ..formats.html import diff_to_html

        _emit(args, diff_to_html(result))
    else:
        _emit(args, result.to_markdown() if args.format == "markdown" else result.to_text())
    return 1 if result.new_violations else 0


def run_compare(args: argparse.Namespace) -> int:
    require_torch("compare")
    from .compare import audit_models, compare_rows, compare_table

    specs = [parse_input_spec(token) for token in args.input]
    memory = _usage(lambda: parse_bytes(args.memory)) if args.memory else None
    reports = _usage(lambda: audit_models(args.factories, specs, args.optimizer, args.amp, memory, args.target))
    if args.format == "html":
        from ..formats.html import compare_to_html

        _emit(args, compare_to_html(reports))
    else:
        _emit(args, compare_table(compare_rows(reports), markdown=args.format == "markdown"))
    return 0
