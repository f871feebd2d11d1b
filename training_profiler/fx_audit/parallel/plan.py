"""Planning across strategies: every strategy's per-rank peak, largest micro-batch and
communication (``plan_strategies``, ``training-profiler plan``), and the activation-checkpointing
advisor. The per-rank simulation itself is ``simulate.simulate_parallel_step``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .simulate import reusing_simulations, simulate_parallel_step

__all__ = ["VARIANTS", "Plan", "PlanRow", "advise_checkpointing", "plan_strategies", "render_plan"]

VARIANTS = (
    ("ddp", {"parallel": "ddp"}),
    ("zero1", {"parallel": "zero1"}),
    ("fsdp-zero2", {"parallel": "fsdp", "reshard_after_forward": False}),
    ("fsdp-zero3", {"parallel": "fsdp"}),
    ("fsdp-zero3+offload", {"parallel": "fsdp", "offload": "params"}),
)


@dataclass
class PlanRow:
    """One strategy of a plan: the largest rank's peak at the micro-batch, the largest micro-batch
    that fits the budget, and the bytes each rank sends through collectives per step."""

    strategy: str
    options: dict[str, Any]
    peak_bytes: int
    per_rank: list[dict[str, Any]]  # [{"ranks": [...], "peak_bytes": ..., "breakdown": {...}}]
    comm_bytes: dict[str, int]
    max_micro_batch: int | None = None
    fits: bool | None = None

    @property
    def comm_total(self) -> int:
        return sum(self.comm_bytes.values())


@dataclass
class Plan:
    model: str
    world_size: int
    budget: int | None
    micro_batch: int
    rows: list[PlanRow] = field(default_factory=list)
    recommendation: str | None = None
    checkpoint_advice: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row, data in zip(self.rows, out["rows"]):
            data["comm_total"] = row.comm_total
        return out


def _batched(inputs: tuple, batch: int) -> tuple:
    import torch

    return tuple(torch.empty((batch, *t.shape[1:]), dtype=t.dtype, device="meta")
                 if isinstance(t, torch.Tensor) and t.dim() else t for t in inputs)


def plan_strategies(model: Any, example_inputs: tuple, *, world_size: int, budget: int | None = None,
                    optimizer: str = "adamw", amp: str | None = None, checkpointing: bool = True,
                    variants: Any = VARIANTS, solve_batch: bool = True, target: str | None = None) -> Plan:
    """Every strategy of ``variants`` (each also with ``checkpoint="blocks"`` when the model has
    repeated blocks and ``checkpointing``): per-rank peak at ``example_inputs`` (one rank's
    micro-batch), the largest micro-batch that fits ``budget`` and the communication per step.
    With ``amp`` bf16/fp16, FSDP rows use ``mixed_precision`` (FSDP's param dtype) instead of
    autocast. The recommendation is the strategy that fits with the least communication (then
    without offload, then without checkpointing, then the smallest peak)."""
    from .fsdp import default_units

    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    rows_to_run = []
    for name, options in variants:
        options = dict(options)
        if options["parallel"] == "fsdp" and amp in ("bf16", "fp16"):
            options["mixed_precision"] = amp
        rows_to_run.append((name, options))
        if checkpointing and default_units(model):
            rows_to_run.append((name + "+ckpt", {**options, "checkpoint": "blocks"}))
    micro_batch = example_inputs[0].shape[0] if getattr(example_inputs[0], "dim", lambda: 0)() else 1
    plan = Plan(model=type(model).__name__, world_size=world_size, budget=budget, micro_batch=micro_batch)
    with reusing_simulations():  # offload rows reuse their base row's steps, the solver the row's own
        for name, options in rows_to_run:
            plan.rows.append(_plan_row(model, example_inputs, name, options, world_size, budget, optimizer, amp,
                                       solve_batch, target))
    fitting = [r for r in plan.rows if r.fits is not False]
    if fitting:
        # equal communication: no host offload (PCIe traffic), then no recompute, then the smaller peak
        best = min(fitting, key=lambda r: (r.comm_total, "offload" in r.strategy, "ckpt" in r.strategy, r.peak_bytes))
        plan.recommendation = best.strategy
    return plan


def _plan_row(model: Any, example_inputs: tuple, name: str, options: dict[str, Any], world_size: int,
              budget: int | None, optimizer: str, amp: str | None, solve_batch: bool, target: str | None) -> PlanRow:
    from ..batch_solver import batch_of, max_batch_size

    row_amp = None if options.get("mixed_precision") else amp

    def simulate(inputs):
        return simulate_parallel_step(model, inputs, optimizer=optimizer, amp=row_amp, world_size=world_size,
                                      target=target, **options)

    report = simulate(example_inputs)
    row = PlanRow(strategy=name, options=options, peak_bytes=report.peak_bytes, comm_bytes=report.comm_bytes,
                  per_rank=[{"ranks": r.ranks, "peak_bytes": r.peak_bytes, "breakdown": r.breakdown}
                            for r in report.per_rank])
    if budget is not None:
        row.fits = row.peak_bytes <= budget
        if solve_batch:
            batch = batch_of(example_inputs)  # the step just simulated is that batch's
            row.max_micro_batch = max_batch_size(
                model, lambda b: _batched(example_inputs, b), budget, peak_of=lambda inputs: simulate(inputs).oom_bytes,
                known=None if batch is None else {batch: report.oom_bytes})
    return row


def advise_checkpointing(model: Any, example_inputs: tuple, budget: int, *, optimizer: str = "adamw",
                         amp: str | None = None, **options: Any) -> dict[str, Any] | None:
    """The fewest repeated blocks to checkpoint so that the step fits ``budget``, and the
    recompute FLOPs they add (one more forward of each checkpointed block per step).

    Two simulations, none and all blocks checkpointed; each checkpointed block saves the same
    activations (identical blocks), so the peak in between is interpolated linearly and the
    answer simulated once more to confirm. No GPU and no ILP solver. None when the model has no
    repeated blocks or even checkpointing all of them does not fit."""
    from ..engine import audit
    from .fsdp import default_units

    blocks = default_units(model)
    if not blocks:
        return None

    def peak(chosen: list[str]) -> int:
        return simulate_parallel_step(model, example_inputs, optimizer=optimizer, amp=amp,
                                      checkpoint=chosen or None, **options).oom_bytes

    none, every = peak([]), peak(blocks)
    if none <= budget:
        count, fits_peak = 0, none
    elif every > budget:
        return None
    else:
        saved = (none - every) / len(blocks)
        count = min(len(blocks), max(1, math.ceil((none - budget) / saved)))
        fits_peak = peak(blocks[:count])
        while fits_peak > budget and count < len(blocks):
            count += 1
            fits_peak = peak(blocks[:count])
    chosen = blocks[:count]
    layers = audit(model, example_inputs, memory=False, rules=False).layers
    flops = sum(r.flops_forward for r in layers
                if r.module is not None and any(r.module == b or r.module.startswith(b + ".") for b in chosen))
    return {"blocks": chosen, "count": count, "of": len(blocks), "peak_bytes": fits_peak,
            "peak_without": none, "recompute_flops": flops}


def render_plan(plan: Plan, fmt: str = "table") -> str:
    """The plan as an aligned text table, Markdown or JSON."""
    if fmt == "json":
        return json.dumps(plan.to_dict(), indent=2) + "\n"
    from ...units import human_bytes as format_bytes

    head = ["strategy", "peak/rank", "max micro-batch", "fits", "comm/step/rank"]
    body = [[r.strategy, format_bytes(r.peak_bytes), "-" if r.max_micro_batch is None else str(r.max_micro_batch),
             "-" if r.fits is None else ("yes" if r.fits else "no"), format_bytes(r.comm_total)] for r in plan.rows]
    title = (f"{plan.model}: {plan.world_size} ranks, micro-batch {plan.micro_batch}"
             + (f", budget {format_bytes(plan.budget)} per rank" if plan.budget else ""))
    if plan.recommendation:
        tail = f"recommendation: {plan.recommendation} (fits with the least communication)"
    else:
        tail = "recommendation: none of these fits: use a smaller micro-batch or more ranks"
    advice = plan.checkpoint_advice
    if advice:
        tail += (f"\ncheckpointing advisor: checkpoint {advice['count']} of {advice['of']} blocks "
                 f"({', '.join(advice['blocks'][:3])}{', ...' if advice['count'] > 3 else ''}) for a peak of "
                 f"{format_bytes(advice['peak_bytes'])}, adding {advice['recompute_flops'] / 1e9:.3g} GFLOPs of "
                 "recompute per step")
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines + ["", tail]) + "\n"
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in body]
    return "\n".join(lines + [tail]) + "\n"
