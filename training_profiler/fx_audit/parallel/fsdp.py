"""FSDP2: ``fully_shard`` on each unit, then on the root, run by PyTorch's own code on the fake
copy of the model and a fake process group of ``world_size`` ranks.

Sharding, padding (dim 0 chunked into ``ceil(rows / world_size)`` rows, the last ranks' shards
padded or empty), the all-gather and reduce-scatter buffers, resharding after forward and
mixed-precision casts all come from the engine itself. The simulation labels what it allocates:
storages FSDP resizes up (``alloc_storage``) are gathered parameters, gradients handed to
``foreach_reduce`` are unsharded gradients, and buffers allocated inside the collectives are
communication buffers.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

__all__ = ["FSDPEngine", "apply_checkpointing", "default_units", "resolve_modules", "shard_rows"]


def shard_rows(rows: int, world_size: int, rank: int) -> int:
    """Rows of dim 0 that ``rank`` holds (``torch.chunk`` semantics, as FSDP2 shards); every
    rank's storage is padded to ``ceil(rows / world_size)`` rows."""
    chunk = -(-rows // world_size)
    return max(0, min(chunk, rows - rank * chunk))


def default_units(model: Any) -> list[str]:
    """The elements of the ModuleList/Sequential of identical blocks holding the most parameters."""
    import torch

    best, best_params = [], 0
    for path, container in model.named_modules():
        if not isinstance(container, (torch.nn.ModuleList, torch.nn.Sequential)):
            continue
        children = list(container.named_children())
        if len(children) < 2 or len({type(m) for _, m in children}) != 1:
            continue
        params = sum(p.numel() for p in container.parameters())
        if params > best_params:
            best, best_params = [f"{path}.{name}" if path else name for name, _ in children], params
    return best


def resolve_modules(model: Any, spec: Any, what: str) -> list[str]:
    """Module paths named by ``spec``: a list of qualified names and/or module classes."""
    if isinstance(spec, (str, type)):
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise TypeError(f"{what} must be a non-empty list of module names or classes, got {spec!r}")
    names = [n for n, m in model.named_modules() if n and any(
        (isinstance(s, type) and isinstance(m, s)) or s == n for s in spec)]
    if not names:
        shown = ", ".join(s.__name__ if isinstance(s, type) else repr(s) for s in spec)
        raise ValueError(f"{what}={shown} names no module of {type(model).__name__}: "
                         "pass qualified names from model.named_modules() or module classes")
    return names


def apply_checkpointing(model: Any, paths: list[str] | None) -> None:
    """``apply_activation_checkpointing`` (non-reentrant) on the modules at ``paths`` that exist
    (a simulation with fewer repeated blocks has fewer)."""
    if not paths:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    targets = {id(m) for n, m in model.named_modules() if n in set(paths)}
    wrapper = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                context_fn=_recompute_contexts)
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: id(m) in targets)


def _recompute_contexts():
    """(forward, recompute) contexts of one checkpointed call: the CUDA target's autocast
    emulation, active in the forward, is applied again to the recomputation, as real autocast is."""
    from ..targets.cuda import CudaEmulation

    emulation = CudaEmulation.active
    recompute = emulation.recompute_region() if emulation is not None else contextlib.nullcontext()
    return contextlib.nullcontext(), recompute


class FSDPEngine:
    name = "fsdp"
    # the backward of block k still holds block k+1's reduce-scatter buffer: from 3 blocks on,
    # each block adds the same bytes (the repeated-block extrapolation starts there)
    blocks_before_steady = 3

    def __init__(self, world_size: int, rank: int, units: list[str], reshard_after_forward: bool = True,
                 mixed_precision: str | None = None, checkpoint: list[str] | None = None) -> None:
        self.world_size, self.rank, self.units = world_size, rank, units
        self.reshard_after_forward, self.mixed_precision, self.checkpoint = (
            reshard_after_forward, mixed_precision, checkpoint)

    def wrap(self, model) -> None:
        import torch
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.model = model
        existing = {n for n, _ in model.named_modules()}
        units = [model.get_submodule(n) for n in self.units if n in existing]
        apply_checkpointing(model, self.checkpoint)
        wrappers = {id(getattr(m, "_checkpoint_wrapped_module", m)): m for m in model.modules()}
        with unset_fake_temporarily():  # the mesh's rank map is real data
            mesh = init_device_mesh("cpu", (self.world_size,))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mixed_precision)
        options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": self.reshard_after_forward}
        if dtype is not None:
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for unit in units:
            fully_shard(wrappers.get(id(unit), unit), **options)
        fully_shard(model, **options)

    @contextlib.contextmanager
    def running(self, mode, phase) -> Iterator[None]:
        """Label FSDP's allocations: gathered parameters (storage resized up), unsharded
        gradients (handed to the reduce-scatter) and collective buffers."""
        import torch
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group

        resize, gather, reduce = torch.UntypedStorage.resize_, group.foreach_all_gather, group.foreach_reduce

        def tracked_resize(storage, nbytes):
            out = resize(storage, nbytes)
            mode.resize(storage, nbytes, "unsharded_params")
            return out

        def in_comm(function):
            def call(*args, **kwargs):
                phase.category = "comm_buffers"
                try:
                    return function(*args, **kwargs)
                finally:
                    phase.category = None
            return call

        def reduce_labelled(fsdp_params, unsharded_grads, *args, **kwargs):
            for grad in unsharded_grads:
                mode.relabel(grad, "unsharded_grads")
            return in_comm(reduce)(fsdp_params, unsharded_grads, *args, **kwargs)

        # gloo (CPU) runs all_gather_into_tensor and reduce_scatter_tensor through a temporary of the
        # full-size side, freed when the collective ends (measured: bench/distributed_memory.py)
        mode.collective_scratch = frozenset({"all_gather", "reduce_scatter"})
        torch.UntypedStorage.resize_ = tracked_resize
        group.foreach_all_gather, group.foreach_reduce = in_comm(gather), reduce_labelled
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = resize
            group.foreach_all_gather, group.foreach_reduce = gather, reduce
            # lazy init may re-pad a shard into a new storage during the first forward (fake
            # tensors have no data pointers to compare): the sharded parameters are what they hold
            for param in self.model.parameters():
                if hasattr(param, "to_local"):  # not when a step failed with parameters gathered
                    mode.relabel(param.to_local(), "params")

    def comm_bytes(self, model) -> dict[str, int]:
        return {}  # counted from the collectives of the simulation
