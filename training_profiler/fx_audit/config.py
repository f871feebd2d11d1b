"""The models and budgets a repository declares for ``training-profiler audit --config``.

Configuration (``pyproject.toml``)::

    [tool.training-profiler.audit]            # rule thresholds (AuditConfig), all optional
    max-plain-depth = 20

    [tool.training-profiler.audit.models.resnet]
    factory = "mypkg.models:resnet18"          # module:function, or path/to/file.py:function
    inputs = ["8,3,224,224"]                   # one --input token per positional input (or [[8, 3, 224, 224]]):
                                               # "8,1024:int64", "8,1024:int1000" as on the command line
    dtype = "float32"                          # dtype of the inputs whose token names none
    optimizer = "adamw"                        # adam | adamw | sgd | sgd-momentum
    amp = "bf16"                               # bf16 | fp16 | pure-bf16 | pure-fp16 (optional)
    target = "cuda"                            # cpu | cuda: device of the memory prediction (optional)
    real-weights = false                       # build on CPU with real weights (enables FXA105)
    parallel = "fsdp"                          # a per-rank plan: ddp | zero1 | fsdp | zero2 | zero3 (optional);
    world-size = 8                             # the inputs are then one rank's micro-batch
    max-params = 12_000_000                    # budgets, all optional
    max-peak-memory = "8GiB"
    max-flops = 2e10                           # forward + backward FLOPs of one training step
    fail-on = ["error"]                        # finding severities that fail the budget

Torch-free: the records and the checks read plain data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..findings import Severity
from ..inputs import DTYPES, InputSpec, parse_input_spec
from ..units import human_bytes, parse_bytes
from .records import AuditReport
from .rules import AuditConfig

__all__ = ["Budget", "ModelSpec", "check_budget", "load_config"]


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
    inputs: tuple[InputSpec, ...]
    optimizer: str = "adam"
    amp: str | None = None
    target: str | None = None
    real_weights: bool = False
    budget: Budget = field(default_factory=Budget)
    parallel: str | None = None  # distributed plan: the budget applies to the largest rank's peak
    world_size: int = 1


def _input(value: Any, dtype: str, where: str) -> InputSpec:
    """``"8,1024:int64"`` (an --input token) or ``[8, 3, 224, 224]`` -> InputSpec."""
    if isinstance(value, str):
        return parse_input_spec(value, dtype)
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return InputSpec(tuple(value), dtype)
    raise ValueError(f"{where}: cannot read input shape {value!r}: write it as \"8,3,224,224\", \"8,1024:int64\" "
                     "or [8, 3, 224, 224]")


_SPEC_KEYS = {"factory", "inputs", "dtype", "optimizer", "amp", "target", "real-weights", "max-params", "max-peak-memory",
              "max-flops", "fail-on", "parallel", "world-size"}


def _model_spec(name: str, table: dict[str, Any]) -> ModelSpec:
    table = {k.replace("_", "-"): v for k, v in table.items()}
    unknown = set(table) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} in [tool.training-profiler.audit.models.{name}]: "
                         f"use {', '.join(sorted(_SPEC_KEYS))}")
    if "factory" not in table or "inputs" not in table:
        raise ValueError(f"[tool.training-profiler.audit.models.{name}] needs factory = \"module:function\" and inputs = [\"8,3,224,224\"]")
    target = table.get("target")
    if target is not None and target not in ("cpu", "cuda"):
        raise ValueError(f"unknown target {target!r} for model {name!r}: use \"cpu\" or \"cuda\"")
    dtype = str(table.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} for model {name!r}: use one of {', '.join(DTYPES)}")
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
    return ModelSpec(name=name, factory=str(table["factory"]),
                     inputs=tuple(_input(i, dtype, f"models.{name}.inputs") for i in inputs),
                     optimizer=str(table.get("optimizer", "adam")), amp=table.get("amp"), target=target,
                     real_weights=bool(table.get("real-weights", False)), budget=budget,
                     parallel=table.get("parallel"), world_size=table.get("world-size", 1))


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


def budget_for(config_path: str | None, model_name: str | None, report: AuditReport) -> Budget | None:
    """The budget of ``model_name`` (or of the model ``report`` is about) in ``config_path``."""
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
