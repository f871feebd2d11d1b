"""The storage tracker of the memory simulation: a TorchDispatchMode that records every storage
the aten ops allocate (and, through weak references, when each is freed), the live bytes after
every op, and the peak of the last step with what is alive at it.

Device-neutral: what a device adds on top of the tensors (kernel workspaces that fake kernels do
not show) comes from a ``targets`` table of rules keyed by op, passed in as ``Trace.rules``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from .records import MemoryReport, TensorInfo

__all__ = ["CATEGORIES", "Trace", "build_report", "innermost_module", "label_state", "tracker_mode"]

CATEGORIES = ("params", "grads", "optimizer_state", "activations", "temporaries")
# categories of distributed plans (fx_audit.parallel), reported only when present: gathered
# parameters/gradients of a sharded engine and communication buffers (buckets, collective I/O)
PARALLEL_CATEGORIES = ("unsharded_params", "unsharded_grads", "comm_buffers")
# c10d collectives as the dispatch mode sees them -> the kind of communication volume they count
_COLLECTIVES = {
    "allreduce_": "all_reduce", "allreduce_coalesced_": "all_reduce",
    "allgather_": "all_gather", "_allgather_base_": "all_gather", "allgather_into_tensor_coalesced_": "all_gather",
    "reduce_scatter_": "reduce_scatter", "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter", "broadcast_": "broadcast",
}

@dataclass
class _Storage:
    """One storage: allocated by an aten op during the simulation, or alive before it (params, inputs)."""

    nbytes: int
    phase: str
    module: str | None
    op: str
    shape: list[int]
    dtype: str
    step: int
    alloc_event: int
    free_event: int | None = None
    category: str | None = None  # set for params/grads/optimizer state once known
    description: str | None = None
    extra_bytes: int = 0  # workspace correction


@dataclass
class Trace:
    """Every storage of one simulation, the live bytes and the peak of the last step."""

    storages: list[_Storage] = field(default_factory=list)
    live: dict[int, _Storage] = field(default_factory=dict)  # id(untyped storage) -> record
    live_bytes: int = 0
    events: int = 0
    peak_bytes: int = 0
    peak_event: int = 0
    peak_phase: str = "setup"
    peak_module: str | None = None
    peak_step: int = -1
    transient_at_peak: int = 0  # corrected kernel workspace at the peak (not in any tensor)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    corrected_ops: set = field(default_factory=set)
    rules: dict = field(default_factory=dict)  # op -> WorkspaceRule of the simulated device's target
    round_bytes: Any = None  # the target allocator's rounding of one request (CUDA: 512-byte blocks)
    comm_bytes: dict = field(default_factory=dict)  # collective kind -> full-size bytes, in the last step
    comm_step: int = -1


def innermost_module(tracker, root_name: str) -> str | None:
    """Innermost module in ModuleTracker's parents, as a qualified path ('' prefix stripped)."""
    names = [n for n in tracker.parents if n != "Global"]
    if not names:
        return None
    inner = max(names, key=lambda n: n.count("."))
    if inner == root_name:
        return root_name
    return inner.split(".", 1)[1] if "." in inner else inner


def tracker_mode(trace: Trace, phase, tracker, root_name: str):
    """(dispatch mode that records every op's output storages into ``trace``, ``track(tensor, op,
    module)`` to register a storage that exists already). ``phase.name`` / ``phase.step`` say
    where the step is at each op; ``tracker`` is a ModuleTracker for the running module."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass
    from torch.utils._pytree import tree_leaves

    def on_free(key: int, record: _Storage) -> None:
        if trace.live.get(key) is record:
            del trace.live[key]
            trace.live_bytes -= record.nbytes + record.extra_bytes
            trace.events += 1
            record.free_event = trace.events

    def add(storage, nbytes: int, op: str, module: str | None, shape: list[int], dtype) -> _Storage:
        key = id(storage)
        trace.events += 1
        record = _Storage(
            nbytes=trace.round_bytes(nbytes) if trace.round_bytes is not None else nbytes, phase=phase.name,
            module=module, op=op, shape=shape,
            dtype=str(dtype).replace("torch.", ""), step=phase.step, alloc_event=trace.events,
            category=getattr(phase, "category", None),
        )
        trace.storages.append(record)
        trace.live[key] = record
        trace.live_bytes += record.nbytes
        weakref.finalize(storage, on_free, key, record)
        return record

    def track(tensor, op: str, module: str | None) -> _Storage | None:
        if is_traceable_wrapper_subclass(tensor):  # e.g. DTensor: its local tensors hold the storage
            inner = [getattr(tensor, attr) for attr in tensor.__tensor_flatten__()[0]]
            records = [track(t, op, module) for t in inner if isinstance(t, torch.Tensor)]
            return records[-1] if records else None
        storage = tensor.untyped_storage()
        if id(storage) in trace.live:
            return None
        return add(storage, storage.nbytes(), op, module, list(tensor.shape), tensor.dtype)

    def resize(storage, nbytes: int, category: str | None) -> None:
        """``UntypedStorage.resize_`` (FSDP frees and re-allocates gathered parameters this way)."""
        key = id(storage)
        record = trace.live.get(key)
        if record is not None:
            on_free(key, record)
        if nbytes:
            add(storage, nbytes, "resize_", innermost_module(tracker, root_name) if tracker is not None else None,
                [nbytes], "uint8").category = category

    class _TrackStorages(TorchDispatchMode):
        collective_scratch: frozenset = frozenset()  # collective kinds whose backend allocates their size

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            module = innermost_module(tracker, root_name) if tracker is not None else None
            op = str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            kind = _COLLECTIVES.get(op)
            scratch = 0
            if kind is not None:
                if phase.step > trace.comm_step:  # count the last step only
                    trace.comm_bytes, trace.comm_step = {}, phase.step
                # gathered output, scattered input, reduced/broadcast tensor: the full-size side
                counted = args[1] if kind == "reduce_scatter" else args[0]
                nbytes = sum(t.nbytes for t in tree_leaves(counted) if isinstance(t, torch.Tensor))
                trace.comm_bytes[kind] = trace.comm_bytes.get(kind, 0) + nbytes
                if kind in self.collective_scratch:  # the backend copies through a full-size buffer
                    scratch = nbytes
            records = [track(t, op, module) for t in outputs]
            transient = scratch
            rule = trace.rules.get(op)
            if rule is not None:
                real_outputs, transient = rule.estimate(args, outputs)
                for index, real_bytes in real_outputs.items():
                    record = records[index] if index < len(records) else None
                    if record is not None and real_bytes > record.nbytes:
                        record.extra_bytes = real_bytes - record.nbytes
                        trace.live_bytes += record.extra_bytes
                if transient or real_outputs:
                    trace.corrected_ops.add(op)
            if phase.step > trace.peak_step:  # the peak reported is that of the last step
                trace.peak_bytes, trace.peak_step = 0, phase.step
            if trace.live_bytes + transient > trace.peak_bytes:
                trace.peak_bytes, trace.peak_event = trace.live_bytes + transient, trace.events
                trace.peak_phase, trace.peak_module, trace.transient_at_peak = phase.name, module, transient
            trace.timeline.append(
                {"step": phase.step, "phase": phase.name, "module": module, "live_bytes": trace.live_bytes}
            )
            return out

    def relabel(tensor, category: str) -> None:
        record = trace.live.get(id(tensor.untyped_storage()))
        if record is not None:
            record.category = category

    mode = _TrackStorages()
    mode.resize, mode.relabel = resize, relabel  # for engines that resize storages or know what they hold
    return mode, track



def label_state(trace: Trace, model, opt, names: dict[int, str]) -> None:
    """Categories known only at the end: which storages became .grad and optimizer state."""
    import torch

    by_storage = trace.live

    def storage_key(tensor) -> int:
        local = getattr(tensor, "_local_tensor", tensor)  # DTensor (sharded engines): its local shard
        return id(local.untyped_storage())

    for p in model.parameters():
        if p.grad is not None:
            record = by_storage.get(storage_key(p.grad))
            if record is not None:
                record.category, record.description = "grads", f"grad of {names.get(id(p), '?')}"
    opt = getattr(opt, "optim", opt)  # ZeroRedundancyOptimizer keeps its rank's state in its local .optim
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                record = by_storage.get(storage_key(value))
                if record is not None and record.category in (None, "comm_buffers"):
                    record.category, record.description = "optimizer_state", f"{key} of {names.get(id(p), '?')}"


def _category(record: _Storage) -> str:
    if record.category in ("params", "grads", "optimizer_state", *PARALLEL_CATEGORIES):
        return record.category
    if record.category == "inputs":
        return "activations"
    if record.phase in ("forward", "loss"):
        return "activations"
    return "temporaries"


def build_report(trace: Trace, last_step: int) -> MemoryReport:
    alive = [
        r for r in trace.storages
        if r.alloc_event <= trace.peak_event and (r.free_event is None or r.free_event > trace.peak_event)
    ]
    breakdown = dict.fromkeys(CATEGORIES, 0)
    breakdown["temporaries"] += trace.transient_at_peak
    for r in alive:
        category = _category(r)
        breakdown[category] = breakdown.get(category, 0) + r.nbytes + r.extra_bytes
    top = sorted(alive, key=lambda r: r.nbytes + r.extra_bytes, reverse=True)[:10]
    top_tensors = [
        TensorInfo(
            description=r.description or f"{r.op} output ({r.phase}{' at ' + r.module if r.module else ''})",
            shape=r.shape, dtype=r.dtype, bytes=r.nbytes + r.extra_bytes, category=_category(r),
            module=r.module,
        )
        for r in top
    ]
    last = [t for t in trace.timeline if t["step"] == last_step]
    stride = max(1, len(last) // 200)
    timeline = [
        {"phase": t["phase"], "module": t["module"], "live_bytes": t["live_bytes"]} for t in last[::stride]
    ]
    return MemoryReport(
        peak_bytes=trace.peak_bytes, peak_phase=trace.peak_phase, peak_module=trace.peak_module,
        breakdown=breakdown, top_tensors=top_tensors, timeline=timeline, comm_bytes=dict(trace.comm_bytes),
    )
