"""`training-profiler precision`: compare a model's layers in fp32 and under bf16/fp16 autocast.

Importable without torch: torch is imported inside the functions that run a command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..inputs import UsageError, load_factory, load_input, require_torch

__all__ = ["register", "run_precision", "print_bbox_demo"]

_DTYPES = ("bf16", "fp16", "bfloat16", "float16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "precision",
        help="compare every layer of a model in fp32 and under bf16/fp16 autocast",
        description="Run MODEL in fp32 and under torch.autocast with the same inputs and weights, and report "
                    "each layer's relative error, the first layer over tolerance and the layers that amplify "
                    "error most. Exit 1 when a layer exceeds the tolerance.")
    p.add_argument("factory", metavar="MODEL",
                   help="pkg.module:factory or path/to/file.py:factory; the factory returns a model or "
                        "(model, example inputs)")
    p.add_argument("--input", action="append", default=[], metavar="SPEC",
                   help="a positional input (repeatable): SHAPE such as 2,16,32 (float32 normal values), "
                        "SHAPE:DTYPE such as 2,16:int64 (integers: zeros), SHAPE:intN such as 2,16:int1000 "
                        "(integers in [0, N)), or a .pt file (default: the example inputs the factory returns)")
    p.add_argument("--dtype", choices=_DTYPES, default="bf16", help="autocast dtype (default: bf16)")
    p.add_argument("--device", default=None, help="device to run on, e.g. cpu or cuda (default: the model's)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="relative L2 error above which a layer fails (default: 0.05 for bf16, 0.01 for fp16)")
    p.add_argument("--memory-budget", type=float, default=1024.0, metavar="MIB",
                   help="fp32 reference activations held at once, in MiB (default: 1024)")
    p.add_argument("--gradients", action="store_true",
                   help="also compare each module's parameter gradients (of a fixed random projection of the output)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(run=run_precision)


def run_precision(args: argparse.Namespace) -> int:
    require_torch("precision")
    import torch

    from .precision import ModelRunError, compare_precision

    built = load_factory(args.factory)()
    model, inputs = built if isinstance(built, tuple) and len(built) == 2 else (built, None)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{args.factory} returned {type(model).__name__}, not a torch.nn.Module or (model, inputs)")
    if args.input:
        parsed = [load_input(token, "cpu") for token in args.input]
        inputs = parsed[0] if len(parsed) == 1 and not isinstance(parsed[0], torch.Tensor) else tuple(parsed)
    if inputs is None:
        raise UsageError(f"{args.factory} returned no example inputs: pass --input SHAPE")
    device_type = None
    if args.device:
        device = torch.device(args.device)
        model = model.to(device)
        inputs = _to_device(inputs, device)
        device_type = device.type
    try:
        report = compare_precision(model, inputs, dtype=args.dtype, device_type=device_type,
                                   tolerance=args.tolerance, memory_budget=int(args.memory_budget * 2**20),
                                   gradients=args.gradients)
    except (TypeError, ValueError, ModelRunError) as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(_strict_json(report.to_dict()), indent=2))
    else:
        sys.stdout.write(str(report))
    return 1 if report.first_exceeding is not None else 0


def _to_device(value: Any, device: Any) -> Any:
    if hasattr(value, "to") and not isinstance(value, (tuple, list, dict)):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _strict_json(value: Any) -> Any:
    """inf/NaN (an overflowed layer) as the strings "inf"/"nan", so the output is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def print_bbox_demo(museum: Path) -> None:
    """The demo's precision section: analyse the museum's bbox tensor, then compare the museum's
    transformer with an fp16-unsafe exp under bf16 autocast."""
    from .precision import analyze_tensor, compare_precision

    folder = Path(museum) / "tensors"
    bbox = load_factory(f"{folder / 'bbox_regression.py'}:bbox_predictions")()
    sys.stdout.write(str(analyze_tensor(bbox, name="bbox_pred")))
    model, tokens = load_factory(f"{folder / 'unsafe_softmax_transformer.py'}:make_model")()
    report = compare_precision(model, tokens, dtype="bf16")
    worst = report.layer(report.first_exceeding) if report.first_exceeding is not None else None
    print(f"\ncompare_precision(TinyTransformer, bf16): first layer over tolerance "
          f"{report.tolerance:g}: {worst.label if worst else 'none'}"
          + (f" (relative error {worst.rel_error:.3g})" if worst else "")
          + f"; model output error {report.output_rel_error:.3g}")
