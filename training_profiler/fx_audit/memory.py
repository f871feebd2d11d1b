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

The simulation is device-neutral: the storage tracker is ``memory_tracker``, and what a device
adds on top of the tensors (CPU: oneDNN workspaces, per instruction set) is its table of rules in
``targets``. The batch-size solver is ``batch_solver``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

from ..inputs import spec_to_tensor as _spec_to_tensor
from ..inputs import split_inputs as _split_inputs
from ..units import parse_bytes
from .memory_tracker import Trace, build_report, innermost_module, label_state, tracker_mode
from .records import MemoryReport
from .targets import workspace_rules

__all__ = [
    "AMP_MODES",
    "OPTIMIZERS",
    "TARGETS",
    "default_loss",
    "measure_training_step",
    "parse_bytes",
    "resolve_target",
    "simulate_training_step",
]

AMP_MODES = (None, "bf16", "fp16", "pure-bf16", "pure-fp16")
TARGETS = ("cpu", "cuda")
OPTIMIZERS = ("adam", "adamw", "sgd", "sgd-momentum", "adam-fused", "adamw-fused")

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
    if name in ("adam-fused", "adamw-fused"):  # one fused kernel per group: no per-parameter temporaries
        return (torch.optim.AdamW if name == "adamw-fused" else torch.optim.Adam)(params, lr=lr, fused=True)
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
               current_layer: Callable[[], str | None] = lambda: None, region: Callable | None = None):
    """``region(dtype)``: the context of the forward and loss (default: torch.autocast on
    ``device_type``; the CUDA target passes its emulation of CUDA autocast and SDPA)."""
    import torch

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    region = region or (lambda dtype: torch.autocast(device_type, dtype=dtype, enabled=dtype is not None))
    for step in range(first, first + steps):
        phase.step = step
        phase.name = "zero_grad"
        opt.zero_grad(set_to_none=True)
        phase.name = "forward"
        with region(autocast_dtype):
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


def resolve_target(model, target: str | None = None) -> str:
    """The device a simulation predicts: ``target`` ("cpu"/"cuda") when given; else the device of
    a real model's tensors, and "cuda" for a meta or fake model (planning for a GPU)."""
    from torch._subclasses.fake_tensor import FakeTensor

    if target is not None:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
        return target
    for tensor in (*model.parameters(), *model.buffers()):
        if isinstance(tensor, FakeTensor) or tensor.device.type == "meta":
            return "cuda"
        return "cuda" if tensor.device.type == "cuda" else "cpu"
    return "cuda"



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
    target: str | None = None,
    engine: Any = None,
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

    ``target`` ("cpu" or "cuda"; ``resolve_target``): the device predicted. Default: a real
    model's own device, "cuda" for a meta or fake model. The CPU target uses CPU autocast's op
    lists, oneDNN's workspaces and the for-loop optimizers. The CUDA target (``targets/cuda.py``)
    uses CUDA autocast's own casts, the SDPA backend CUDA would pick, foreach optimizers, the
    caching allocator's 512-byte blocks (the peak is what ``max_memory_allocated`` would say),
    the cuBLAS workspaces, and reports ``reserved_bytes`` (``max_memory_reserved``).

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

    ``engine``: a distributed engine of ``fx_audit.parallel`` (``wrap(fake_model)`` wraps the fake
    copy as the engine would, ``running(mode, phase)`` is entered around the steps); see ``audit(parallel=...)``.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_options(optimizer, amp, steps)
    options = dict(optimizer=optimizer, amp=amp, steps=steps, loss_fn=loss_fn, lr=lr,
                   target=resolve_target(model, target), engine=engine)
    blocks = _repeated_blocks(model) if repeated_blocks else None
    if blocks is not None:
        path, count = blocks
        try:
            # engines with state carried across blocks (FSDP's pending reduce-scatter) need more
            # blocks before each one adds the same bytes
            kept = getattr(engine, "blocks_before_steady", 2)
            small = _simulate(model, example_inputs, keep=(path, kept), **options)
            large = _simulate(model, example_inputs, keep=(path, kept + 1), **options)
        except ValueError:
            small = large = None  # e.g. the forward indexes blocks by a fixed count: simulate in full
        if small is not None and small.peak_phase == large.peak_phase:
            return _extrapolate(small, large, path, count, kept + 1)
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


def _extrapolate(small: MemoryReport, large: MemoryReport, path: str, count: int, kept: int = 3) -> MemoryReport:
    """The ``kept``-block report with peak and breakdown grown linearly to ``count`` blocks."""
    extra = count - kept
    per_block = large.peak_bytes - small.peak_bytes
    large.peak_bytes += extra * per_block
    large.breakdown = {k: v + extra * (v - small.breakdown.get(k, 0)) for k, v in large.breakdown.items()}
    large.comm_bytes = {k: v + extra * (v - small.comm_bytes.get(k, 0)) for k, v in large.comm_bytes.items()}
    if large.reserved_bytes is not None:  # CUDA target: the kept-block run's cached-but-unused bytes kept
        large.reserved_bytes += extra * per_block
    prefix = f"{path}.{kept - 1}"
    # parameters without a gradient in the last kept block are so in every block after it
    large.params_without_grad += tuple(
        f"{path}.{block}{name[len(prefix):]}"
        for block in range(kept, count) for name in large.params_without_grad if name.startswith(prefix + ".")
    )
    if large.peak_module and (large.peak_module == prefix or large.peak_module.startswith(prefix + ".")):
        large.peak_module = f"{path}.{count - 1}" + large.peak_module[len(prefix):]
    large.notes.append(
        f"{count} identical blocks in '{path}': simulated with {kept - 1} and {kept} of them and extrapolated "
        f"linearly (timeline and top tensors are those of the {kept}-block run)"
    )
    return large


def _simulate(model, example_inputs, *, optimizer, amp, steps, loss_fn, lr, target: str = "cpu",
              keep: tuple[str, int] | None = None, engine: Any = None):
    """One simulation; ``keep=(path, k)`` keeps only the first k blocks of that container."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .capture import fake_copy, quiet_fake_tensor_logs

    # the CUDA target runs on fake CPU tensors with CUDA's behaviour brought in (targets/cuda.py)
    device = "cpu" if target == "cuda" else _simulation_device(model)
    pure_dtype = {"pure-bf16": torch.bfloat16, "pure-fp16": torch.float16}.get(amp)
    autocast_amp = amp if amp in ("bf16", "fp16") else None
    trace = Trace(rules=workspace_rules(target if target == "cuda" else device))
    region = None
    if target == "cuda":
        from .targets.cuda import CudaEmulation
        from .targets.cuda_allocator import round_size

        trace.round_bytes = round_size
        region = CudaEmulation  # CudaEmulation(dtype): CUDA autocast and SDPA around the forward
    phase = _Phase()

    fake_mode = FakeTensorMode(allow_non_fake_inputs=False)
    with fake_mode, quiet_fake_tensor_logs():
        fake_model, _ = fake_copy(model, fake_mode, pure_dtype, device, keep=keep)
        fake_model.train()
        if engine is not None:
            engine.wrap(fake_model)
        args, kwargs = _split_inputs(example_inputs)
        args = tuple(_spec_to_tensor(a, device, pure_dtype) for a in args)
        kwargs = {k: _spec_to_tensor(v, device, pure_dtype) for k, v in kwargs.items()}
        params = [p for p in fake_model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no trainable parameters: nothing to train, no step to simulate"
            )
        opt = _make_optimizer(optimizer, params, lr, target if target == "cuda" else device)
        tracker = _module_tracker()
        mode, track = tracker_mode(trace, phase, tracker, type(model).__name__)
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

        def current_layer() -> str | None:
            return innermost_module(tracker, type(model).__name__)

        last_step = steps - 1
        running = engine.running(mode, phase) if engine is not None else contextlib.nullcontext()
        with tracker, mode, running:
            _prime_optimizer(params, opt, phase)
            _run_steps(fake_model, args, kwargs, opt, loss_fn, autocast_amp, device, steps - 1, phase, first=1,
                       current_layer=current_layer, region=region)
            without_grad = [p for p in params if p.grad is None]
            if without_grad:
                # torch.optim skips parameters whose .grad is None, so they never get state; the
                # priming step gave them some: drop it and report one more step, as torch runs it
                for p in without_grad:
                    opt.state.pop(p, None)
                last_step = steps
                _run_steps(fake_model, args, kwargs, opt, loss_fn, autocast_amp, device, 1, phase, first=steps,
                           current_layer=current_layer, region=region)
        label_state(trace, fake_model, opt, names)
        report = build_report(trace, last_step)
        report.params_without_grad = tuple(names[id(p)] for p in params if p.grad is None)
    report.optimizer = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", "custom")
    report.amp = amp
    report.target = target
    if target == "cuda":
        from .targets.cuda import finish_cuda_report

        finish_cuda_report(report, trace, last_step,
                           host_steps=not (opt.defaults.get("fused") or opt.defaults.get("capturable")))
    if trace.corrected_ops:
        sources = sorted({trace.rules[op].source for op in trace.corrected_ops})
        report.notes.append(
            f"{target.upper()} kernel workspaces that fake tensors do not show were added from a measured per-op "
            f"table: {', '.join(sorted(trace.corrected_ops))} ({'; '.join(sources)})"
        )
    approximate = sorted(op for op in trace.corrected_ops if not trace.rules[op].exact)
    if approximate:
        report.confidence = "low"
        report.notes.append(
            f"{', '.join(approximate)}: workspace sizes are fitted envelopes or measured tables, not exact; "
            "treat the peak as an estimate"
        )
    return report


def _module_tracker():
    """torch's ``ModuleTracker``, except that a forward run inside backward (the recomputation of
    non-reentrant activation checkpointing) registers no gradient hooks. The recomputed graph is
    never backpropagated, so those hooks never fire, and their closures hold its nodes, and the
    recomputed tensors those nodes save, in a reference cycle until the tracker exits: checkpointed
    peaks were inflated by the recomputed blocks' activations (a real run frees them at once)."""
    import torch
    from torch.utils.module_tracker import ModuleTracker

    class Tracker(ModuleTracker):
        def _fw_pre_hook(self, mod, input) -> None:
            if torch._C._current_graph_task_id() == -1:
                super()._fw_pre_hook(mod, input)
            else:
                self._get_append_fn(self._get_mod_name(mod), False)()

        def _fw_post_hook(self, mod, input, output) -> None:
            if torch._C._current_graph_task_id() == -1:
                super()._fw_post_hook(mod, input, output)
            else:
                self._get_pop_fn(self._get_mod_name(mod), False)()

    return Tracker()


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
