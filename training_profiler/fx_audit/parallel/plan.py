"""Per-rank memory plans: the training-step simulation of ``fx_audit.memory`` with the model
wrapped the way each distributed engine wraps it, on a fake process group of ``world_size``
ranks (``torch.testing._internal.distributed.fake_pg``, as torch's ``FSDPMemTracker`` uses).
One simulation per distinct rank; the report's peak is the largest rank's."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from ..records import MemoryReport

__all__ = ["STRATEGIES", "VARIANTS", "Plan", "PlanRow", "advise_checkpointing", "check_parallel_options",
           "plan_strategies", "render_plan", "simulate_parallel_step"]

STRATEGIES = ("ddp", "zero1", "fsdp", "zero2", "zero3")
MIXED_PRECISION = (None, "bf16", "fp16")
_OFFLOAD = {"fsdp": ("params",), "zero2": ("optimizer",), "zero3": ("optimizer", "params")}


def check_parallel_options(model: Any, *, parallel: str | None, world_size: int, reshard_after_forward: bool,
                           fsdp_units: Any, checkpoint: Any, mixed_precision: str | None,
                           offload: str | None) -> None:
    """One-line ValueError/TypeError for each option that cannot be planned."""
    if parallel is not None and parallel not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {parallel!r}: use None or one of {', '.join(STRATEGIES)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be an integer >= 1 (the number of ranks)")
    if parallel is None and world_size != 1:
        raise ValueError(f"world_size={world_size} needs a parallel strategy: pass parallel= one of "
                         f"{', '.join(STRATEGIES)}")
    if not isinstance(reshard_after_forward, bool):
        raise TypeError(f"reshard_after_forward must be True or False, got {reshard_after_forward!r}")
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"unknown mixed_precision {mixed_precision!r}: use None, 'bf16' or 'fp16'")
    if mixed_precision is not None and parallel != "fsdp":
        raise ValueError(f"mixed_precision={mixed_precision!r} is FSDP's MixedPrecisionPolicy: use parallel='fsdp' "
                         "(or amp= for autocast with any strategy)")
    if fsdp_units is not None and parallel != "fsdp":
        raise ValueError("fsdp_units is only used with parallel='fsdp'")
    if offload is not None and offload not in _OFFLOAD.get(parallel, ()):
        allowed = ", ".join(f"{s}: {'/'.join(o)}" for s, o in _OFFLOAD.items())
        raise ValueError(f"offload={offload!r} is not available with parallel={parallel!r} "
                         f"(offload works with {allowed})")
    if fsdp_units is not None:
        from .fsdp import resolve_modules

        resolve_modules(model, fsdp_units, "fsdp_units")
    if checkpoint is not None and checkpoint != "blocks":
        from .fsdp import resolve_modules

        resolve_modules(model, checkpoint, "checkpoint")
    if parallel == "fsdp":
        scalars = [n for n, p in model.named_parameters() if p.dim() == 0]
        if scalars:
            raise ValueError(f"parameter {scalars[0]!r} is a scalar and cannot be sharded along dim 0 by FSDP: "
                             "make it a 1-element tensor (shape [1]) or use parallel='ddp'")


@contextlib.contextmanager
def fake_process_group(rank: int, world_size: int) -> Iterator[None]:
    """A fake process group: collectives return at once, no other process exists."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialized in this process: "
                           "plan in a process without one")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _units(model: Any, fsdp_units: Any) -> list[str]:
    from .fsdp import default_units, resolve_modules

    return resolve_modules(model, fsdp_units, "fsdp_units") if fsdp_units is not None else default_units(model)


def _checkpoint_paths(model: Any, checkpoint: Any, units: list[str]) -> list[str] | None:
    from .fsdp import default_units, resolve_modules

    if checkpoint is None:
        return None
    if checkpoint == "blocks":
        blocks = units or default_units(model)
        if not blocks:
            raise ValueError(f"checkpoint='blocks' found no repeated blocks in {type(model).__name__}: "
                             "name the modules to checkpoint (a list of names or classes)")
        return blocks
    return resolve_modules(model, checkpoint, "checkpoint")


def _fsdp_rank_groups(model: Any, world_size: int) -> list[list[int]]:
    """Ranks whose shards have the same shapes (uneven dim 0 makes the last ranks differ)."""
    from .fsdp import shard_rows

    groups: dict[tuple, list[int]] = {}
    for rank in range(world_size):
        key = tuple(shard_rows(p.shape[0], world_size, rank) for p in model.parameters())
        groups.setdefault(key, []).append(rank)
    return list(groups.values())


def _zero1_rank_groups(model: Any, world_size: int) -> list[list[int]]:
    """Ranks whose ZeroRedundancyOptimizer partitions hold the same parameter sizes. The partition
    repeats ZeRO's own rule (``_partition_parameters``): largest parameter first, each to the rank
    with the fewest elements so far (the first such rank); the simulation then runs ZeRO itself."""
    sizes = [0] * world_size
    held: list[list[int]] = [[] for _ in range(world_size)]
    for numel in sorted((p.numel() for p in model.parameters() if p.requires_grad), reverse=True):
        rank = sizes.index(min(sizes))
        held[rank].append(numel)
        sizes[rank] += numel
    groups: dict[tuple, list[int]] = {}
    for rank in range(world_size):
        groups.setdefault(tuple(held[rank]), []).append(rank)
    return list(groups.values())


def simulate_parallel_step(model: Any, example_inputs: Any, *, optimizer: str = "adam", amp: str | None = None,
                           parallel: str | None = None, world_size: int = 1, reshard_after_forward: bool = True,
                           fsdp_units: Any = None, checkpoint: Any = None, mixed_precision: str | None = None,
                           offload: str | None = None, loss_fn: Callable | None = None) -> MemoryReport:
    """The per-rank training-step memory of ``model`` under ``parallel`` (see ``audit``).
    ``example_inputs`` is ONE rank's micro-batch. Returns the largest rank's report, with one
    record per distinct rank in ``per_rank`` and the communication volume in ``comm_bytes``."""
    from ..memory import simulate_training_step
    from .ddp import DDPEngine
    from .fsdp import FSDPEngine
    from .zero import zero1_optimizer

    check_parallel_options(model, parallel=parallel, world_size=world_size,
                           reshard_after_forward=reshard_after_forward, fsdp_units=fsdp_units,
                           checkpoint=checkpoint, mixed_precision=mixed_precision, offload=offload)
    if parallel in ("zero1", "zero2", "zero3") and optimizer not in ("adam", "adamw", "sgd", "sgd-momentum"):
        raise ValueError(f"parallel={parallel!r} partitions a named optimizer: use optimizer= adam, adamw, sgd or "
                         f"sgd-momentum, not {optimizer!r}")
    if parallel in ("zero2", "zero3"):
        return _deepspeed(model, example_inputs, optimizer, amp, parallel, world_size, checkpoint, offload, loss_fn)
    units = _units(model, fsdp_units) if parallel == "fsdp" else []
    ckpt = _checkpoint_paths(model, checkpoint, units)
    if parallel is None:
        groups = [[0]]
    elif parallel == "fsdp":
        groups = _fsdp_rank_groups(model, world_size)
    elif parallel == "zero1":
        groups = _zero1_rank_groups(model, world_size)
    else:
        groups = [list(range(world_size))]

    records = []
    for ranks in groups:
        rank = ranks[0]
        if parallel == "fsdp":
            engine = FSDPEngine(world_size, rank, units, reshard_after_forward, mixed_precision, ckpt)
        elif parallel is not None:
            engine = DDPEngine(world_size, rank, ckpt)
        else:
            engine = _CheckpointOnly(ckpt) if ckpt else None
        opt = zero1_optimizer(optimizer) if parallel == "zero1" else optimizer
        with fake_process_group(rank, world_size):
            report = simulate_training_step(model, example_inputs, optimizer=opt, amp=amp, loss_fn=loss_fn,
                                            engine=engine)
        report.optimizer = optimizer
        report.comm_bytes.update(engine.comm_bytes(model) if engine is not None else {})
        if offload == "params":
            _offload_to_host(report)
        report.parallel, report.world_size, report.ranks = parallel, world_size, ranks
        records.append(report)
    largest = max(records, key=lambda r: r.peak_bytes)
    result = copy.copy(largest)
    result.per_rank = records
    result.ranks = list(range(world_size))
    if len(records) > 1:
        result.notes = [*largest.notes, f"ranks differ (uneven shards): the peak is rank {largest.ranks[0]}'s"]
    return result


class _CheckpointOnly:
    """No distributed engine: only activation checkpointing on the named modules."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def wrap(self, model) -> None:
        from .fsdp import apply_checkpointing

        apply_checkpointing(model, self.paths)

    def running(self, mode, phase):
        return contextlib.nullcontext()

    def comm_bytes(self, model) -> dict[str, int]:
        return {}


def _offload_to_host(report: MemoryReport) -> None:
    """FSDP ``CPUOffloadPolicy``: sharded parameters, their gradients and the optimizer state live
    in host memory; the device keeps what is gathered, activations and buffers. Approximated on
    the simulated peak (the engine is not run with offload: on CPU there is no other device)."""
    host = sum(report.breakdown.get(k, 0) for k in ("params", "grads", "optimizer_state"))
    for key in ("params", "grads", "optimizer_state"):
        report.breakdown[key] = 0
    report.peak_bytes -= host
    report.notes.append(f"offload='params': {host} bytes of sharded parameters, gradients and optimizer state "
                        "moved to host memory (subtracted from the simulated peak)")


def _deepspeed(model, example_inputs, optimizer, amp, parallel, world_size, checkpoint, offload, loss_fn):
    """DeepSpeed stage 2/3: DeepSpeed's model-state accounting plus the activations and
    temporaries of the model simulated in its low precision (see ``zero``)."""
    from ..memory import simulate_training_step
    from .zero import deepspeed_estimator_bytes, deepspeed_model_states, largest_layer_params

    low = "pure-fp16" if amp in ("fp16", "pure-fp16") else "pure-bf16"
    stage = int(parallel[-1])
    ckpt = _checkpoint_paths(model, checkpoint, [])
    single = simulate_training_step(model, example_inputs, optimizer=optimizer, amp=low, loss_fn=loss_fn,
                                    engine=_CheckpointOnly(ckpt) if ckpt else None)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = largest_layer_params(model)
    states = deepspeed_model_states(stage, params, largest, world_size, optimizer, offload=offload)
    breakdown = {k: v for k, v in single.breakdown.items() if k in ("activations", "temporaries")}
    breakdown.update(states)
    report = copy.copy(single)
    report.breakdown = breakdown
    report.peak_bytes = sum(breakdown.values())
    report.top_tensors, report.timeline = [], []
    report.amp, report.optimizer = low, optimizer
    report.parallel, report.world_size, report.ranks = parallel, world_size, list(range(world_size))
    low_bytes = 2
    report.comm_bytes = ({"reduce_scatter": low_bytes * params, "all_gather": low_bytes * params} if stage == 2 else
                         {"reduce_scatter": low_bytes * params, "all_gather": 2 * low_bytes * params})
    estimator = deepspeed_estimator_bytes(stage, params, largest, world_size, offload)
    report.notes = [*single.notes,
                    f"DeepSpeed ZeRO-{stage} is modelled by formula (DeepSpeed does not run here): model states "
                    f"{sum(states.values())} bytes per rank; DeepSpeed's own estimator says {estimator} bytes "
                    "for model states alone; activations and temporaries come from the simulation in "
                    f"{low[5:]}"]
    report.per_rank = [copy.copy(report)]
    return report


# ------------------------------------------------------------------------------------------------
# the strategy table of `training-profiler plan`

# (row name, options): ZeRO-2-like FSDP keeps gathered parameters from forward to backward
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
                    variants: Any = VARIANTS, solve_batch: bool = True) -> Plan:
    """Every strategy of ``variants`` (each also with ``checkpoint="blocks"`` when the model has
    repeated blocks and ``checkpointing``): per-rank peak at ``example_inputs`` (one rank's
    micro-batch), the largest micro-batch that fits ``budget`` and the communication per step.
    With ``amp`` bf16/fp16, FSDP rows use ``mixed_precision`` (FSDP's param dtype) instead of
    autocast. The recommendation is the strategy that fits with the least communication (then
    without offload, then without checkpointing, then the smallest peak)."""
    from ..batch_solver import max_batch_size
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
    for name, options in rows_to_run:
        row_amp = None if options.get("mixed_precision") else amp

        def simulate(inputs, options=options, row_amp=row_amp):
            return simulate_parallel_step(model, inputs, optimizer=optimizer, amp=row_amp, world_size=world_size,
                                          **options)

        report = simulate(example_inputs)
        row = PlanRow(strategy=name, options=options, peak_bytes=report.peak_bytes, comm_bytes=report.comm_bytes,
                      per_rank=[{"ranks": r.ranks, "peak_bytes": r.peak_bytes, "breakdown": r.breakdown}
                                for r in report.per_rank])
        if budget is not None:
            row.fits = row.peak_bytes <= budget
            if solve_batch:
                row.max_micro_batch = max_batch_size(
                    model, lambda b: _batched(example_inputs, b), budget,
                    peak_of=lambda inputs, simulate=simulate: simulate(inputs).peak_bytes)
        plan.rows.append(row)
    fitting = [r for r in plan.rows if r.fits is not False]
    if fitting:
        # equal communication: no host offload (PCIe traffic), then no recompute, then the smaller peak
        best = min(fitting, key=lambda r: (r.comm_total, "offload" in r.strategy, "ckpt" in r.strategy, r.peak_bytes))
        plan.recommendation = best.strategy
    return plan


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
                                      checkpoint=chosen or None, **options).peak_bytes

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
