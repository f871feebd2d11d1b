"""Capture a model's graph without touching the model: the cascade, the fake copy, the builder.

Every path works on a *fake copy* of the user's model (``fake_copy``): the same module tree with
each parameter, buffer and tensor attribute replaced by a FakeTensor on CPU (same shape, dtype,
``requires_grad`` and tying). The user's model is never traced, called, moved or hooked, so no
state can change and no hook can be left behind; a 7B model on ``meta`` costs no memory.

The cascade (``capture``) answers with the first path that works and records why the earlier ones
failed:

1. ``symbolic_trace``: ``torch.fx.symbolic_trace``; fast, one node per leaf module or function.
2. ``leaf_tracer``: the same tracer, but each submodule whose forward cannot be traced (Python
   control flow on tensor values or shapes, iteration over proxies, ...) is kept as one opaque leaf.
3. ``export``: ``torch.export.export(strict=False)`` on the fake inputs; aten-level nodes, each
   attributed to its module through ``nn_module_stack``. Hugging Face models get ``use_cache=False``.
4. ``hooks``: run the fake copy eagerly with forward hooks on its modules (no graph, always answers).

This module imports torch: import it only from torch-using code paths.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import logging
import math
from typing import Any, Callable, Iterator

import torch
import torch.fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef

from .records import CaptureInfo

__all__ = ["Captured", "build_model", "capture", "data_dependent_output", "fake_copy", "is_data_dependent",
           "neutral_init"]

PATHS = ("symbolic_trace", "leaf_tracer", "export", "hooks")


@contextlib.contextmanager
def neutral_init() -> Iterator[None]:
    """Turn every ``torch.nn.init.*_`` function into a no-op returning its tensor.

    Initialisers raise under FakeTensorMode (``trunc_normal_`` reads values) and waste time on
    ``meta``; their values do not matter for an audit. Functions imported by name before the
    build (``from torch.nn.init import trunc_normal_``) are out of reach and still run.
    """
    init = torch.nn.init
    saved = {name: fn for name, fn in vars(init).items() if name.endswith("_") and not name.startswith("_")
             and callable(fn)}
    try:
        for name in saved:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def build_model(factory: Callable[..., nn.Module], *args: Any, fake_mode: FakeTensorMode | None = None,
                **kwargs: Any) -> nn.Module:
    """Build ``factory(*args, **kwargs)`` without allocating parameter memory.

    The model is built on the ``meta`` device with ``torch.nn.init`` neutralised. With ``fake_mode``
    it is then materialised as FakeTensors on CPU (``to_empty`` under that mode), ready to run
    inside ``fake_mode``; otherwise it stays on ``meta``, which ``audit`` accepts as is.
    """
    with neutral_init(), torch.device("meta"):
        model = factory(*args, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory {getattr(factory, '__name__', factory)!r} returned {type(model).__name__}, "
                        "not an nn.Module: pass a function that builds the model")
    if fake_mode is not None:  # ``to_empty`` under the fake mode, without feeding it the meta tensors
        with fake_mode:
            model = model._apply(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu"))
    return model


def _fake_like(t: torch.Tensor, fake_mode: FakeTensorMode, float_dtype: torch.dtype | None, device: str) -> torch.Tensor:
    dtype = float_dtype if float_dtype is not None and t.is_floating_point() else t.dtype
    with fake_mode:
        fake = torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=device)
    if isinstance(t, nn.Parameter):
        return nn.Parameter(fake, requires_grad=t.requires_grad)
    return fake


@contextlib.contextmanager
def quiet_fake_tensor_logs() -> Iterator[None]:
    """FakeTensorMode logs a traceback for every failing kernel; we raise one clear error instead."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def fake_copy(model: nn.Module, fake_mode: FakeTensorMode, float_dtype: torch.dtype | None = None,
              device: str = "cpu", keep: tuple[str, int] | None = None) -> tuple[nn.Module, dict[int, torch.Tensor]]:
    """The module tree of ``model`` with every tensor replaced by a fake tensor on ``device``.

    ``float_dtype`` casts floating tensors (pure bf16/fp16 training). ``keep=(path, k)`` copies
    only the first k children of the container at ``path`` (the rest are neither faked nor
    copied: a 3-block copy of an 80-block model costs 3 blocks). Returns the copy and
    ``{id(original tensor): fake tensor}``; tied tensors map to one fake.
    """
    memo: dict[int, Any] = {}
    fakes: dict[int, torch.Tensor] = {}
    by_storage: dict[tuple, torch.Tensor] = {}  # distinct Parameter objects over one storage stay tied
    container = model.get_submodule(keep[0]) if keep is not None else None
    for module in _modules_kept(model, container, keep[1] if keep is not None else 0):
        tensors = list(module._parameters.values()) + list(module._buffers.values())
        tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
        for t in tensors:
            if t is None or id(t) in fakes:
                continue
            key = (StorageWeakRef(t.untyped_storage()).cdata, t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                   t.dtype, isinstance(t, nn.Parameter))
            if key not in by_storage:
                by_storage[key] = _fake_like(t, fake_mode, float_dtype, device)
            fakes[id(t)] = memo[id(t)] = by_storage[key]
    try:
        if container is not None:  # its copy holds only the kept children
            memo[id(container._modules)] = copy.deepcopy(
                collections.OrderedDict(list(container._modules.items())[: keep[1]]), memo)
        return copy.deepcopy(model, memo), fakes
    except Exception as exc:
        raise TypeError(f"cannot audit {type(model).__name__}: copying its module tree failed ({exc}); "
                        "the model must be deep-copyable apart from its tensors") from exc


def _modules_kept(module: nn.Module, container: nn.Module | None, kept: int) -> Iterator[nn.Module]:
    """``module.modules()`` (each once, same order) without the children of ``container`` after
    its first ``kept``."""
    seen: set[int] = set()

    def walk(m: nn.Module) -> Iterator[nn.Module]:
        if id(m) in seen:
            return
        seen.add(id(m))
        yield m
        children = list(m._modules.values())
        for child in children[:kept] if m is container else children:
            if child is not None:
                yield from walk(child)

    return walk(module)


# ---------------------------------------------------------------------------------------------
# Ops whose output size depends on tensor values: fake tensors have no values, so FakeTensorMode
# (without a ShapeEnv) raises DynamicOutputShapeException. Each op below answers with its largest
# possible output instead (every element selected, every value distinct), which is the real size
# whenever nothing is filtered out (labels without padding) and an upper bound otherwise.


def _long(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return like.new_empty(shape, dtype=torch.long)


def _index(x: torch.Tensor, indices: list, *_: Any) -> torch.Tensor:
    """``x[mask]``: a boolean mask over k dims becomes k index tensors that select every element."""
    full = []
    for index in indices:
        if index is not None and index.dtype in (torch.bool, torch.uint8):
            full += [_long(index, index.numel())] * max(index.dim(), 1)
        else:
            full.append(index)
    return torch.ops.aten.index.Tensor(x, full)


def _unique(x: torch.Tensor, inverse: bool, counts: bool) -> tuple[torch.Tensor, ...]:
    return (x.new_empty((x.numel(),)), _long(x, *(x.shape if inverse else (0,))),
            _long(x, x.numel() if counts else 0))


def _unique_dim(x: torch.Tensor, dim: int, inverse: bool, counts: bool) -> tuple[torch.Tensor, ...]:
    n = x.shape[dim]
    return x.new_empty(x.shape), _long(x, n if inverse else 0), _long(x, n if counts else 0)


_UPPER_BOUNDS: dict[str, Callable[..., Any]] = {
    "aten::nonzero": lambda x: _long(x, x.numel(), x.dim()),
    "aten::masked_select": lambda x, mask: x.new_empty((math.prod(torch.broadcast_shapes(x.shape, mask.shape)),)),
    "aten::index": _index,
    "aten::_unique2": lambda x, sorted=True, return_inverse=False, return_counts=False: _unique(
        x, return_inverse, return_counts),
    "aten::unique_dim": lambda x, dim, sorted=True, return_inverse=False, return_counts=False: _unique_dim(
        x, dim, return_inverse, return_counts),
    # CTC: log_alpha is (batch, time, 2 * longest target + 1); a padded (batch, S) target is at most S long
    "aten::_ctc_loss": lambda log_probs, targets, input_lengths, target_lengths, *_: (
        log_probs.new_empty((log_probs.shape[1],)),
        log_probs.new_empty((log_probs.shape[1], log_probs.shape[0], 2 * targets.shape[-1] + 1))),
    "aten::_ctc_loss_backward": lambda grad, log_probs, *_: log_probs.new_empty(log_probs.shape),
    "aten::unique_consecutive": lambda x, return_inverse=False, return_counts=False, dim=None: (
        _unique(x, return_inverse, return_counts) if dim is None else _unique_dim(x, dim, return_inverse,
                                                                                  return_counts)),
}


def is_data_dependent(exc: BaseException) -> bool:
    """True for the errors fake tensors raise on ops whose output size or value needs real data."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    return isinstance(exc, (DynamicOutputShapeException, DataDependentOutputException, GuardOnDataDependentSymNode))


def data_dependent_output(func: Any, args: tuple, kwargs: dict) -> Any:
    """The fake output of a data-dependent op at its largest size, or ``None`` when the op has no
    bound here (``repeat_interleave`` with tensor repeats). Call it from a dispatch mode running
    above the FakeTensorMode, on fake arguments."""
    bound = _UPPER_BOUNDS.get(func._schema.name)
    return None if bound is None else bound(*args, **kwargs)


class Captured:
    """The result of the cascade: a GraphModule over the fake copy (``None`` for ``hooks``)."""

    def __init__(self, graph_module: torch.fx.GraphModule | None, info: CaptureInfo, kwargs: dict | None = None) -> None:
        self.graph_module = graph_module
        self.info = info
        self.kwargs = kwargs or {}  # the keyword inputs to run it with (export may add use_cache=False)


class _LeafTracer(torch.fx.Tracer):
    """symbolic tracing that treats the listed module paths as leaves and remembers failures."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: str | None = None  # innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:
                self.failed = self.path_of_module(m)
            raise


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _trace(model: nn.Module, leaves: set[str]) -> torch.fx.GraphModule:
    tracer = _LeafTracer(leaves)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        exc.tracer = tracer  # type: ignore[attr-defined]  # tells _leaf_trace which module failed
        raise
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def _leaf_trace(model: nn.Module) -> tuple[torch.fx.GraphModule, list[str]]:
    leaves: set[str] = set()
    while True:
        try:
            return _trace(model, leaves), sorted(leaves)
        except Exception as exc:
            failed = getattr(exc, "tracer", None) and exc.tracer.failed  # type: ignore[attr-defined]
            if not failed or failed in leaves:
                raise  # the root's own forward cannot be traced: nothing to keep opaque
            leaves.add(failed)


def _export(model: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.fx.GraphModule, dict]:
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "use_cache", False):
        kwargs = {**kwargs, "use_cache": False}  # HF decoders: KV cache outputs break export
    logging.disable(logging.CRITICAL)  # a failed export logs whole graphs; the cascade reports the reason
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            program = torch.export.export(model, args, kwargs, strict=False)
    finally:
        logging.disable(logging.NOTSET)
    return program.module(), kwargs


def capture(model: nn.Module, args: tuple, kwargs: dict | None = None, *, paths: tuple[str, ...] = PATHS) -> Captured:
    """Run the cascade on ``model`` (a fake copy) with fake ``args``; the first path that works wins.

    ``paths`` restricts the cascade (tests use it to force a path).
    """
    kwargs = kwargs or {}
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"unknown capture path {unknown[0]!r}: use one of {', '.join(PATHS)}")
    attempts: list[dict[str, str]] = []
    for path in paths:
        try:
            if path == "symbolic_trace":
                if kwargs:
                    raise TypeError("keyword inputs are not supported by symbolic_trace")
                gm = _trace(model, set())
                return Captured(gm, CaptureInfo(path, attempts), kwargs)
            if path == "leaf_tracer":
                if kwargs:
                    raise TypeError("keyword inputs are not supported by symbolic_trace")
                gm, leaves = _leaf_trace(model)
                return Captured(gm, CaptureInfo(path, attempts, leaf_modules=leaves), kwargs)
            if path == "export":
                gm, run_kwargs = _export(model, args, kwargs)
                return Captured(gm, CaptureInfo(path, attempts), run_kwargs)
            return Captured(None, CaptureInfo("hooks", attempts), kwargs)
        except Exception as exc:
            attempts.append({"path": path, "error": _short(exc)})
    raise RuntimeError("no capture path succeeded: " + "; ".join(f"{a['path']}: {a['error']}" for a in attempts))
