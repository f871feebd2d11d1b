"""Per-rank training-step memory: the simulation of ``fx_audit.memory`` with the model wrapped
the way each distributed engine wraps it, on a fake process group of ``world_size`` ranks
(``torch.testing._internal.distributed.fake_pg``, as torch's ``FSDPMemTracker`` uses). One
simulation per distinct rank; the report's peak is the largest rank's."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

from ..records import MemoryReport

__all__ = ["MIXED_PRECISION", "STRATEGIES", "check_parallel_options", "fake_process_group",
           "reusing_simulations", "simulate_parallel_step"]

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
                           offload: str | None = None, loss_fn: Callable | None = None,
                           target: str | None = None) -> MemoryReport:
    """The per-rank training-step memory of ``model`` under ``parallel`` (see ``audit``), on
    ``target`` ("cpu" or "cuda", as ``simulate_training_step``).
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
        return _deepspeed(model, example_inputs, optimizer, amp, parallel, world_size, checkpoint, offload, loss_fn,
                          target)
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

        def simulate(rank=rank) -> MemoryReport:
            if parallel == "fsdp":
                engine = FSDPEngine(world_size, rank, units, reshard_after_forward, mixed_precision, ckpt)
            elif parallel is not None:
                engine = DDPEngine(world_size, rank, ckpt)
            else:
                engine = _CheckpointOnly(ckpt) if ckpt else None
            opt = zero1_optimizer(optimizer) if parallel == "zero1" else optimizer
            with fake_process_group(rank, world_size):
                report = simulate_training_step(model, example_inputs, optimizer=opt, amp=amp, loss_fn=loss_fn,
                                                engine=engine, target=target)
            report.optimizer = optimizer
            report.comm_bytes.update(engine.comm_bytes(model) if engine is not None else {})
            return report

        # everything the simulated step depends on; offload is not in it (applied to the report below)
        key = (model, _inputs_key(example_inputs), optimizer, amp, loss_fn, target, parallel, world_size, rank,
               reshard_after_forward if parallel == "fsdp" else None, tuple(units), ckpt and tuple(ckpt),
               mixed_precision)
        report = _reused(key, simulate)
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


_reuse: dict | None = None  # rank simulations by key while reusing_simulations() is active


@contextlib.contextmanager
def reusing_simulations() -> Iterator[None]:
    """For the duration of a plan: ``simulate_parallel_step`` simulates each rank once per model,
    inputs layout and options (offload only changes the report afterwards, so an offload row
    reuses its base row's steps), and hands out copies."""
    global _reuse
    if _reuse is not None:  # nested: the outer one's cache
        yield
        return
    _reuse = {}
    try:
        yield
    finally:
        _reuse = None


def _reused(key: tuple, simulate: Callable[[], MemoryReport]) -> MemoryReport:
    if _reuse is None or key[1] is None:
        return simulate()
    if key not in _reuse:
        _reuse[key] = simulate()
    return copy.deepcopy(_reuse[key])  # callers change their report (offload, labels)


def _inputs_key(inputs: Any) -> tuple | None:
    """What the simulation takes from example inputs that are all tensors: their shapes, strides
    and dtypes (``inputs.spec_to_tensor``); None for other inputs (not reused)."""
    import torch

    items = inputs.items() if isinstance(inputs, dict) else enumerate(
        inputs if isinstance(inputs, (tuple, list)) else (inputs,))
    key = []
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            return None
        key.append((name, tuple(t.shape), tuple(t.stride()), t.dtype))
    return tuple(key)


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
    if report.reserved_bytes is not None:  # CUDA: their segments are not reserved either (cached bytes unchanged)
        report.reserved_bytes -= host
    report.notes.append(f"offload='params': {host} bytes of sharded parameters, gradients and optimizer state "
                        "moved to host memory (subtracted from the simulated peak)")


def _deepspeed(model, example_inputs, optimizer, amp, parallel, world_size, checkpoint, offload, loss_fn, target):
    """DeepSpeed stage 2/3: DeepSpeed's model-state accounting plus the activations and
    temporaries of the model simulated in its low precision (see ``zero``)."""
    from ..memory import simulate_training_step
    from .zero import deepspeed_estimator_bytes, deepspeed_model_states, largest_layer_params

    low = "pure-fp16" if amp in ("fp16", "pure-fp16") else "pure-bf16"
    stage = int(parallel[-1])
    ckpt = _checkpoint_paths(model, checkpoint, [])
    single = simulate_training_step(model, example_inputs, optimizer=optimizer, amp=low, loss_fn=loss_fn,
                                    engine=_CheckpointOnly(ckpt) if ckpt else None, target=target)
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
