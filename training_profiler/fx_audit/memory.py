"""Training-step memory: simulate steady-state steps under FakeTensorMode, or measure a real one.

``simulate_training_step`` runs real ``torch.optim`` steps on a fake copy of the model (no real
memory is allocated, the user's model is untouched) and tracks every storage that the aten ops
allocate and free. The step is the usual loop::

    optimizer.zero_grad(set_to_none=True)   # grads of the previous step are freed here
    with autocast:                          # only when amp is "bf16" / "fp16"
        loss = loss_fn(model(*inputs))      # default loss: mean of the first floating output
    loss.backward()
    optimizer.step()

and the reported peak is that of the last step (``steps >= 2``, so optimizer state exists).
``measure_training_step`` runs the same loop on real CPU tensors and reads the CPU allocator's
own allocation/free events (``torch.profiler`` with ``profile_memory=True``): the reference of
the accuracy benchmark. Torch is imported inside the functions (the CLI imports this module
without torch).
"""

from __future__ import annotations

import collections
import copy
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from ..inputs import spec_to_tensor as _spec_to_tensor
from ..inputs import split_inputs as _split_inputs
from ..units import parse_bytes
from .records import MemoryReport, TensorInfo

__all__ = [
    "AMP_MODES",
    "OPTIMIZERS",
    "default_loss",
    "max_batch_size",
    "measure_training_step",
    "parse_bytes",
    "simulate_training_step",
]

AMP_MODES = (None, "bf16", "fp16", "pure-bf16", "pure-fp16")
OPTIMIZERS = ("adam", "adamw", "sgd", "sgd-momentum")
CATEGORIES = ("params", "grads", "optimizer_state", "activations", "temporaries")

# --------------------------------------------------------------------------------------------
# the training step shared by the simulation and the real measurement


def _check_options(optimizer: Any, amp: str | None, steps: int) -> None:
    if isinstance(optimizer, str) and optimizer.lower() not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)} or a callable params -> Optimizer"
        )
    if not isinstance(optimizer, str) and not callable(optimizer):
        raise TypeError(
            f"optimizer must be a name ({', '.join(OPTIMIZERS)}) or a callable params -> Optimizer, got {optimizer!r}"
        )
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp mode {amp!r}: use one of {', '.join(repr(m) for m in AMP_MODES)}")
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(
            f"steps must be an int >= 2 so that optimizer state exists in the measured step, got {steps!r}"
        )


def _make_optimizer(optimizer: Any, params: list, lr: float, device_type: str):
    import torch

    if not isinstance(optimizer, str):
        return optimizer(params)
    # torch picks foreach only for tensors on cuda/xpu; fake tensors fail its type check, so we
    # pass the default it would choose for real tensors on this device.
    foreach = device_type in ("cuda", "xpu")
    name = optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, foreach=foreach)
    return torch.optim.SGD(params, lr=lr, momentum=0.9 if name == "sgd-momentum" else 0.0, foreach=foreach)


def _first_float_tensor(output: Any):
    """The tensor the default loss reduces: a tensor, ``.logits``, or the first floating tensor
    found in a tuple/list/dict/ModelOutput."""
    import torch

    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        found = _first_float_tensor(value)
        if found is not None:
            return found
    return None


def default_loss(output: Any):
    """Mean of the model's first floating output (``.logits`` for HF ModelOutputs)."""
    tensor = _first_float_tensor(output)
    if tensor is None:
        raise ValueError(
            f"the model returned {type(output).__name__} with no floating-point tensor to build a loss from: "
            "pass loss_fn=callable(output) -> scalar tensor"
        )
    return tensor.mean()


def _call_model(model, args: tuple, kwargs: dict, current_layer: Callable[[], str | None]):
    try:
        return model(*args, **kwargs)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shapes = [list(a.shape) for a in args if hasattr(a, "shape")] + [
            f"{k}={list(v.shape)}" for k, v in kwargs.items() if hasattr(v, "shape")
        ]
        layer = current_layer()
        where = f" in layer {layer!r}" if layer else ""
        raise ValueError(
            f"running {type(model).__name__} on example inputs {shapes} failed{where} ({str(exc).splitlines()[0]}): "
            "check that the input shapes and dtypes match what the model expects"
        ) from exc


class _Phase:
    """Where the step is: the simulation's dispatch mode reads ``name`` at every allocation."""

    def __init__(self) -> None:
        self.name = "setup"
        self.step = 0


def _run_steps(model, args, kwargs, opt, loss_fn, amp, device_type, steps, phase: _Phase, first: int = 0,
               current_layer: Callable[[], str | None] = lambda: None):
    import torch

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    for step in range(first, first + steps):
        phase.step = step
        phase.name = "zero_grad"
        opt.zero_grad(set_to_none=True)
        phase.name = "forward"
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            output = _call_model(model, args, kwargs, current_layer)
            phase.name = "loss"
            loss = (loss_fn or default_loss)(output)
            del output
        phase.name = "backward"
        loss.backward()
        del loss
        phase.name = "optimizer"
        opt.step()
    phase.name = "done"


# --------------------------------------------------------------------------------------------
# fake copies of the model and the inputs


def _simulation_device(model) -> str:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device.type != "meta":
            return tensor.device.type
    return "cpu"


# --------------------------------------------------------------------------------------------
# the storage tracker


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


# Fake kernels give the right output shapes but not the CPU backends' hidden allocations: oneDNN
# reorders convolution operands into blocked layouts and packs bf16 GEMM operands, the RNN kernels
# keep a workspace that the fake kernel reports as empty, and low-precision full reductions go
# through an fp32 copy. Each entry: aten op name -> function(args, outputs) returning
# ({output index: real bytes of that output}, transient bytes alive only during the op). The
# formulas were fitted to torch.profiler measurements of the real CPU kernels (torch 2.13, fp32
# unless stated); they apply only when the simulated device is the CPU.
_LOW_CONFIDENCE_OPS = {"mkldnn_rnn_layer", "mkldnn_rnn_layer_backward"}


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if t is not None and hasattr(t, "numel") else 0


def _conv_forward(args, outputs):
    # oneDNN computes into a blocked-layout buffer and reorders the weight: output + weight extra
    return {}, _nbytes(outputs[0]) + _nbytes(args[1])


def _conv_backward(args, outputs):
    # grad_output and input are reordered to blocked layouts during the backward kernel
    return {}, _nbytes(args[0]) + _nbytes(args[1]) + _nbytes(args[2])


def _rnn_sizes(x, hidden_size: int) -> tuple[int, int]:
    """(time steps x batch x hidden, bytes per workspace element) of an mkldnn_rnn_layer input
    (T, B, I). The workspace is costed as fp32 for bf16 too: the safe side (bf16 LSTMs then
    over-predict by ~15%, where halving it under-predicted by ~13%)."""
    steps_times_batch = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
    return steps_times_batch * hidden_size, 4


def _rnn_layer_forward(args, outputs):
    # mkldnn_rnn_layer(input, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, batch_sizes, mode, hidden_size, ...)
    tbh, size = _rnn_sizes(args[0], args[10])
    batch_hidden = tbh // max(1, args[0].shape[0])
    workspace = int(15.5 * tbh * size + 12 * batch_hidden * size + 16384)  # saved for backward
    workspace = -(-workspace // 4096) * 4096  # oneDNN allocates whole pages
    weights = _nbytes(args[1]) + _nbytes(args[2])
    return {3: workspace}, int(4.0 * tbh * size + 1.0625 * weights) + 22528


def _rnn_layer_backward(args, outputs):
    # mkldnn_rnn_layer_backward(input, w1, w2, w3, w4, hx, cx, output, hy, cy, grad_output, ..., hidden_size=args[15])
    tbh, size = _rnn_sizes(args[0], args[15])
    weights = _nbytes(args[1]) + _nbytes(args[2])
    # the backward scratch follows no single linear formula across shapes: this is the linear
    # envelope (fitted by LP over 8 measured shapes) that is never under by more than 1% and at
    # most 46% over; the transient is a fraction of the step's peak
    return {}, int(3.75 * tbh * size + 2.03 * weights) + 40960


def _low_precision(t) -> bool:
    import torch

    return t.dtype in (torch.bfloat16, torch.float16)


def _bf16_gemm_scratch(a) -> int:
    """oneDNN's bf16 GEMM packs its operands into scratch buffers (fp16 GEMMs on CPU do not); a
    transposed left operand is first made contiguous."""
    import torch

    if a.dtype != torch.bfloat16:
        return 0
    return 132736 + 256 * min(a.shape[-1], 512) + (0 if a.is_contiguous() else _nbytes(a))


def _mm(args, outputs):  # mm(a, b), bmm(a, b)
    return {}, _bf16_gemm_scratch(args[0])


def _addmm(args, outputs):  # addmm(bias, a, b)
    return {}, _bf16_gemm_scratch(args[1])


def _low_precision_reduction(args, outputs):
    # a full CPU sum/mean of bf16/fp16 (the default loss) accumulates over an fp32 copy of the input
    full = len(args) == 1 or not args[1] or not isinstance(args[1], (list, tuple))
    return {}, args[0].numel() * 4 if full and _low_precision(args[0]) else 0


_CPU_CORRECTIONS: dict[str, Callable] = {
    "mm": _mm,
    "bmm": _mm,
    "addmm": _addmm,
    "mean": _low_precision_reduction,
    "sum": _low_precision_reduction,
    "convolution": _conv_forward,
    "convolution_backward": _conv_backward,
    "mkldnn_rnn_layer": _rnn_layer_forward,
    "mkldnn_rnn_layer_backward": _rnn_layer_backward,
}


@dataclass
class _Trace:
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
    corrections: dict = field(default_factory=dict)  # op -> correction function, per device


def _module_name(tracker, root_name: str) -> str | None:
    """Innermost module in ModuleTracker's parents, as a qualified path ('' prefix stripped)."""
    names = [n for n in tracker.parents if n != "Global"]
    if not names:
        return None
    inner = max(names, key=lambda n: n.count("."))
    if inner == root_name:
        return root_name
    return inner.split(".", 1)[1] if "." in inner else inner


def _make_tracker_mode(trace: _Trace, phase: _Phase, tracker, root_name: str):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    def on_free(key: int, record: _Storage) -> None:
        if trace.live.get(key) is record:
            del trace.live[key]
            trace.live_bytes -= record.nbytes + record.extra_bytes
            trace.events += 1
            record.free_event = trace.events

    def track(tensor, op: str, module: str | None) -> _Storage | None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in trace.live:
            return None
        trace.events += 1
        record = _Storage(
            nbytes=storage.nbytes(), phase=phase.name, module=module, op=op, shape=list(tensor.shape),
            dtype=str(tensor.dtype).replace("torch.", ""), step=phase.step, alloc_event=trace.events,
        )
        trace.storages.append(record)
        trace.live[key] = record
        trace.live_bytes += record.nbytes
        weakref.finalize(storage, on_free, key, record)
        return record

    class _TrackStorages(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            module = _module_name(tracker, root_name) if tracker is not None else None
            op = str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            records = [track(t, op, module) for t in outputs]
            transient = 0
            correction = trace.corrections.get(op)
            if correction is not None:
                real_outputs, transient = correction(args, outputs)
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

    return _TrackStorages(), track


# --------------------------------------------------------------------------------------------
# public API


def simulate_training_step(
    model,
    example_inputs,
    *,
    optimizer: Any = "adam",
    amp: str | None = None,
    steps: int = 2,
    loss_fn: Callable | None = None,
    lr: float = 1e-3,
    repeated_blocks: bool = True,
) -> MemoryReport:
    """Predict the peak memory of one steady-state training step without allocating it.

    ``example_inputs``: a tensor (real, meta or fake), a shape, a tuple/list of those (positional
    arguments) or a dict of keyword arguments; shapes make float32 tensors, and
    ``{"shape": [...], "dtype": "int64"}`` any dtype. ``optimizer``: "adam", "adamw", "sgd",
    "sgd-momentum" or a callable params -> ``torch.optim.Optimizer``. ``amp``: None (fp32),
    "bf16"/"fp16" (autocast on the parameters' device type; meta counts as cpu) or
    "pure-bf16"/"pure-fp16" (weights, buffers and floating inputs cast). The default loss is the
    mean of the first floating output (``.logits`` for HF outputs); pass ``loss_fn`` otherwise.
    ``steps`` (>= 2): the first step only creates the optimizer state (from zero gradients, no
    forward/backward: the state of torch's optimizers depends only on the parameters' shapes);
    the peak reported is that of the last step.

    The simulated device is that of the parameters (a model on ``meta`` is simulated as CPU), and
    autocast uses that device type's op lists: for a CPU or meta model these are CPU autocast's
    lists, which lower the same matmul/conv/linear family as CUDA's but keep some ops (e.g. some
    reductions and norms) in other precisions than CUDA would. Optimizers use torch's own default
    for real tensors on that device (for-loop on CPU, foreach on CUDA). The CUDA caching
    allocator's block rounding and cuBLAS/cuDNN workspaces are not modelled.

    The returned ``MemoryReport`` holds the peak of the last step, the phase ("forward", "loss",
    "backward", "optimizer") and the module running at the peak (in backward: the module whose
    backward runs), the breakdown at the peak (params include buffers; activations include the
    inputs and everything the forward/loss allocated that is still alive; temporaries are the
    rest, plus corrected kernel workspaces), the ten largest tensors alive at the peak and a
    subsampled timeline of live bytes.

    Speed: with ``repeated_blocks`` (default), a model whose largest ModuleList/Sequential holds
    at least 6 identical blocks (same types, parameter shapes and dtypes) is simulated with 2 and
    3 of those blocks, and the peak and breakdown are extrapolated linearly to all of them (a
    transformer's memory grows by the same bytes per block). The report says so in ``notes``;
    its timeline and top tensors are those of the 3-block run. If the two runs disagree on the
    phase of the peak, or the truncated model does not run, the full model is simulated.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_options(optimizer, amp, steps)
    options = dict(optimizer=optimizer, amp=amp, steps=steps, loss_fn=loss_fn, lr=lr)
    blocks = _repeated_blocks(model) if repeated_blocks else None
    if blocks is not None:
        path, count = blocks
        try:
            small = _simulate(model, example_inputs, keep=(path, 2), **options)
            large = _simulate(model, example_inputs, keep=(path, 3), **options)
        except ValueError:
            small = large = None  # e.g. the forward indexes blocks by a fixed count: simulate in full
        if small is not None and small.peak_phase == large.peak_phase:
            return _extrapolate(small, large, path, count)
    return _simulate(model, example_inputs, **options)


_MIN_REPEATS = 6


def _repeated_blocks(model) -> tuple[str, int] | None:
    """(path, length) of the ModuleList/Sequential with the most parameters among those holding
    at least ``_MIN_REPEATS`` identical blocks, or None."""
    import torch

    def signature(module):
        return (
            [type(m) for m in module.modules()],
            [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in module.named_parameters()],
            [(n, tuple(b.shape), b.dtype) for n, b in module.named_buffers()],
        )

    best, best_params = None, 0
    for path, container in model.named_modules():
        if not path or not isinstance(container, (torch.nn.ModuleList, torch.nn.Sequential)):
            continue
        blocks = list(container._modules.values())
        if len(blocks) < _MIN_REPEATS or any(b is None for b in blocks):
            continue
        first = signature(blocks[0])
        if any(signature(b) != first for b in blocks[1:]):
            continue
        params = sum(p.numel() for p in container.parameters())
        if params > best_params:
            best, best_params = (path, len(blocks)), params
    return best


def _extrapolate(small: MemoryReport, large: MemoryReport, path: str, count: int) -> MemoryReport:
    """The 3-block report with peak and breakdown grown linearly to ``count`` blocks."""
    extra = count - 3
    large.peak_bytes += extra * (large.peak_bytes - small.peak_bytes)
    large.breakdown = {k: v + extra * (v - small.breakdown.get(k, 0)) for k, v in large.breakdown.items()}
    prefix = f"{path}.2"
    if large.peak_module and (large.peak_module == prefix or large.peak_module.startswith(prefix + ".")):
        large.peak_module = f"{path}.{count - 1}" + large.peak_module[len(prefix):]
    large.notes.append(
        f"{count} identical blocks in '{path}': simulated with 2 and 3 of them and extrapolated linearly "
        "(timeline and top tensors are those of the 3-block run)"
    )
    return large


def _simulate(model, example_inputs, *, optimizer, amp, steps, loss_fn, lr, keep: tuple[str, int] | None = None):
    """One simulation; ``keep=(path, k)`` keeps only the first k blocks of that container."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.module_tracker import ModuleTracker

    from .capture import fake_copy, quiet_fake_tensor_logs

    device = _simulation_device(model)
    pure_dtype = {"pure-bf16": torch.bfloat16, "pure-fp16": torch.float16}.get(amp)
    autocast_amp = amp if amp in ("bf16", "fp16") else None
    trace = _Trace(corrections=_CPU_CORRECTIONS if device == "cpu" else {})
    phase = _Phase()

    fake_mode = FakeTensorMode(allow_non_fake_inputs=False)
    with fake_mode, quiet_fake_tensor_logs():
        fake_model, _ = fake_copy(model, fake_mode, pure_dtype, device)
        fake_model.train()
        if keep is not None:
            container = fake_model.get_submodule(keep[0])
            container._modules = collections.OrderedDict(list(container._modules.items())[: keep[1]])
        args, kwargs = _split_inputs(example_inputs)
        args = tuple(_spec_to_tensor(a, device, pure_dtype) for a in args)
        kwargs = {k: _spec_to_tensor(v, device, pure_dtype) for k, v in kwargs.items()}
        params = [p for p in fake_model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters: nothing to train, no step to simulate"
            )
        opt = _make_optimizer(optimizer, params, lr, device)
        tracker = ModuleTracker()
        mode, track = _make_tracker_mode(trace, phase, tracker, type(model).__name__)
        names = {}
        for name, p in fake_model.named_parameters():
            names.setdefault(id(p), name)
        for name, b in fake_model.named_buffers():
            names.setdefault(id(b), name)
        # parameters, buffers and inputs exist before the step: register them as live
        for t in (*fake_model.parameters(), *fake_model.buffers(), *args, *kwargs.values()):
            record = track(t, "input", None)
            if record is not None:
                record.category = "params" if id(t) in names else "inputs"
                record.description = names.get(id(t), "example input")
        with tracker, mode:
            _prime_optimizer(params, opt, phase)
            _run_steps(fake_model, args, kwargs, opt, loss_fn, autocast_amp, device, steps - 1, phase, first=1,
                       current_layer=lambda: _module_name(tracker, type(model).__name__))
        _label_state(trace, fake_model, opt, names)
        report = _build_report(trace, steps - 1)
    report.optimizer = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom")
    report.amp = amp
    if trace.corrected_ops:
        report.notes.append(
            "CPU kernel workspaces that fake tensors do not show were added from a measured per-op table: "
            + ", ".join(sorted(trace.corrected_ops))
        )
    approximate = sorted(trace.corrected_ops & _LOW_CONFIDENCE_OPS)
    if approximate:
        report.confidence = "low"
        report.notes.append(
            f"{', '.join(approximate)}: oneDNN workspace sizes are fitted, not exact; treat the peak as an estimate"
        )
    return report


def _prime_optimizer(params: list, opt, phase: _Phase) -> None:
    """Step 0: create the optimizer state from zero gradients. The state of Adam/AdamW/SGD depends
    only on the parameters' shapes, so the forward and backward of a first step are not needed
    (they would double the simulation time of large models)."""
    import torch

    phase.step, phase.name = 0, "optimizer"
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _label_state(trace: _Trace, model, opt, names: dict[int, str]) -> None:
    """Categories known only at the end: which storages became .grad and optimizer state."""
    import torch

    by_storage = trace.live
    for p in model.parameters():
        if p.grad is not None:
            record = by_storage.get(id(p.grad.untyped_storage()))
            if record is not None:
                record.category, record.description = "grads", f"grad of {names.get(id(p), '?')}"
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                record = by_storage.get(id(value.untyped_storage()))
                if record is not None and record.category is None:
                    record.category, record.description = "optimizer_state", f"{key} of {names.get(id(p), '?')}"


def _category(record: _Storage) -> str:
    if record.category in ("params", "grads", "optimizer_state"):
        return record.category
    if record.category == "inputs":
        return "activations"
    if record.phase in ("forward", "loss"):
        return "activations"
    return "temporaries"


def _build_report(trace: _Trace, last_step: int) -> MemoryReport:
    alive = [
        r for r in trace.storages
        if r.alloc_event <= trace.peak_event and (r.free_event is None or r.free_event > trace.peak_event)
    ]
    breakdown = dict.fromkeys(CATEGORIES, 0)
    breakdown["temporaries"] += trace.transient_at_peak
    for r in alive:
        breakdown[_category(r)] += r.nbytes + r.extra_bytes
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
        breakdown=breakdown, top_tensors=top_tensors, timeline=timeline,
    )


def measure_training_step(
    model,
    example_inputs,
    *,
    optimizer: Any = "adam",
    amp: str | None = None,
    steps: int = 3,
    loss_fn: Callable | None = None,
    lr: float = 1e-3,
) -> int:
    """Measure the real CPU allocator peak of the last of ``steps`` training steps, in bytes.

    Runs the same loop as ``simulate_training_step`` on a deep copy of ``model`` (real memory is
    allocated: use small inputs). Bytes alive when the measured step starts (parameters, buffers,
    optimizer state, inputs, after ``zero_grad``) are summed from the live tensors; on top of them,
    ``torch.profiler`` (``profile_memory=True``) reports every allocation and free of the CPU
    allocator during the step, including kernel workspaces that no Python-level hook sees.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from torch._subclasses.fake_tensor import FakeTensor

    _check_options(optimizer, amp, steps)
    tensors = [*model.parameters(), *model.buffers()]
    where = {"fake" if isinstance(t, FakeTensor) else t.device.type for t in tensors}
    if where - {"cpu"}:
        raise ValueError(
            f"measure_training_step runs a real step on the CPU allocator, but the model's tensors are on "
            f"{sorted(where - {'cpu'})}: pass a model with real CPU tensors (or use simulate_training_step)"
        )
    real = copy.deepcopy(model)
    pure_dtype = {"pure-bf16": torch.bfloat16, "pure-fp16": torch.float16}.get(amp)
    if pure_dtype is not None:
        real.to(pure_dtype)
    real.train()
    args, kwargs = _split_inputs(example_inputs)

    def real_input(item):
        if isinstance(item, torch.Tensor):
            if item.device.type != "cpu" or isinstance(item, FakeTensor):
                raise ValueError(f"measure_training_step needs real CPU example inputs, got one on {item.device}")
            item = item.detach().clone()
            return item.to(pure_dtype) if pure_dtype is not None and item.is_floating_point() else item
        tensor = _spec_to_tensor(item, "cpu", pure_dtype)  # shape specs: random floats, zero ids
        return tensor.normal_() if tensor.is_floating_point() else tensor.zero_()

    args = tuple(real_input(a) for a in args)
    kwargs = {k: real_input(v) for k, v in kwargs.items()}
    params = [p for p in real.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, params, lr, "cpu")
    autocast_amp = amp if amp in ("bf16", "fp16") else None
    phase = _Phase()
    _run_steps(real, args, kwargs, opt, loss_fn, autocast_amp, "cpu", steps - 1, phase)
    opt.zero_grad(set_to_none=True)

    baseline_tensors = [*real.parameters(), *real.buffers(), *args, *kwargs.values()]
    baseline_tensors += [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in baseline_tensors}
    baseline = sum(storages.values())

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _run_steps(real, args, kwargs, opt, loss_fn, autocast_amp, "cpu", 1, phase)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return baseline + peak


def max_batch_size(
    model,
    make_inputs: Callable[[int], Any],
    budget_bytes: int | str,
    *,
    optimizer: Any = "adam",
    amp: str | None = None,
    limit: int = 1 << 20,
) -> int:
    """The largest batch size whose simulated training-step peak fits in ``budget_bytes``
    (0 if not even batch 1 fits). ``make_inputs(batch_size)`` returns example inputs as accepted
    by ``simulate_training_step``. Peak memory grows about linearly with the batch size: secant
    steps from batches 1 and 2 find the crossing (a few fake runs), then a bracket and bisection
    settle it exactly."""
    budget = parse_bytes(budget_bytes)
    if not callable(make_inputs):
        raise TypeError(
            f"make_inputs must be a callable batch_size -> example inputs, got {type(make_inputs).__name__}"
        )
    peaks: dict[int, int] = {}

    def peak(batch: int) -> int:
        if batch not in peaks:
            peaks[batch] = simulate_training_step(model, make_inputs(batch), optimizer=optimizer, amp=amp).peak_bytes
        return peaks[batch]

    start = 1
    try:
        first = peak(1)
    except ValueError as exc:
        if "more than 1 value per channel" not in str(exc):
            raise
        start = 2  # training-mode BatchNorm on a 1x1 map needs two samples: batch 1 cannot train at all
        first = peak(2)
    if first > budget:
        return 0
    # secant steps on the (nearly linear) peak(batch) curve, starting from the two smallest batches
    low, high = start, start + 1
    guess = start
    for _ in range(6):
        slope = max((peak(high) - peak(low)) / (high - low), 1e-9)
        guess = int(min(limit, max(start, low + (budget - peak(low)) // slope)))
        if guess in (low, high):
            break
        low, high = (high, guess) if abs(guess - high) < abs(guess - low) else (low, guess)
        low, high = min(low, high), max(low, high)
    # bracket the answer around the guess with steps 1, 2, 4, ... (the fit is usually exact, so this
    # costs one or two runs), then bisect: batch `fits` fits, batch `too_big` does not
    if peak(guess) <= budget:
        fits, too_big, step = guess, None, 1
        while too_big is None:
            probe = min(limit, fits + step)
            if probe == fits:
                return limit
            if peak(probe) > budget:
                too_big = probe
            else:
                fits, step = probe, step * 2
    else:
        fits, too_big, step = start, guess, 1
        while too_big - step > start:
            probe = too_big - step
            if peak(probe) <= budget:
                fits = probe
                break
            too_big, step = probe, step * 2
    while too_big - fits > 1:
        middle = (fits + too_big) // 2
        if peak(middle) <= budget:
            fits = middle
        else:
            too_big = middle
    return fits
