"""The CUDA target: what a training step on an NVIDIA GPU adds to the fake tensors.

A CPU-only torch build cannot run autograd on fake CUDA tensors (its engine needs a CUDA device
guard and an accelerator to sync streams: the process aborts), so the CUDA target simulates on fake
CPU tensors and brings the CUDA behaviour in explicitly, each rule with its source:

- **Autocast**: ``CudaEmulation`` (a TorchFunctionMode) asks PyTorch's own AutocastCUDA kernels
  which inputs of each call they cast and to what, by running the call on fake CUDA copies of its
  tensors with CUDA autocast switched on in the thread-local state (``torch.set_autocast_enabled
  ("cuda", True)``: ``torch.autocast("cuda")`` refuses without a GPU, the dispatch key does not),
  then applies the same casts to the simulated tensors (with autocast's cache of cast weights).
- **SDPA**: the backend torch's ``sdp_utils.cpp`` would pick (``sdpa_backend``), run through that
  backend's own aten op, so autograd saves what it saves (flash: logsumexp and the Philox RNG state;
  memory-efficient: logsumexp, seed and offset; math: the attention matrix).
- **Workspaces**: cuBLAS/cuBLASLt workspaces (``cublas_workspace_bytes``), kept per (handle,
  stream) by ``aten/src/ATen/cuda/CublasHandlePool.cpp``. cuDNN convolution workspaces depend on the
  algorithm cuDNN picks (heuristics, or ``benchmark=True``): not added to the peak, but bounded and
  flagged (``finish_cuda_report``). No per-op rules, so no oneDNN corrections.
- **Allocator**: ``cuda_allocator`` (512-byte blocks, segments, reserved bytes).

Optimizers use torch's CUDA default (foreach); see ``memory._make_optimizer``.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

__all__ = [
    "CudaEmulation",
    "SDPA_SOURCE",
    "autocast_casts",
    "cublas_workspace_bytes",
    "device_capability",
    "finish_cuda_report",
    "sdpa_backend",
]

SDPA_SOURCE = "aten/src/ATen/native/transformers/cuda/sdp_utils.cpp (torch 2.13)"
PLANNING_CAPABILITY = (9, 0)  # Hopper (H100/H200): the GPU assumed when this machine has none


def device_capability() -> tuple[int, int]:
    """The compute capability the CUDA target sizes for: this machine's GPU 0, else sm90."""
    import torch

    if torch.cuda.is_available():
        return tuple(torch.cuda.get_device_capability())
    return PLANNING_CAPABILITY


def cublas_workspace_bytes(capability: tuple[int, int] = PLANNING_CAPABILITY, env: dict | None = None) -> int:
    """Bytes of one cuBLAS workspace (``CublasHandlePool.cpp``, ``parseChosenWorkspaceSize``):
    ``CUBLAS_WORKSPACE_CONFIG=:SIZE:COUNT[:SIZE:COUNT...]`` gives the sum of SIZE KiB x COUNT;
    unset, 4096 KiB x 8 = 32 MiB on sm90 (Hopper), else 4096 KiB x 2 + 16 KiB x 8. cuBLASLt shares
    this workspace by default (``TORCH_CUBLASLT_UNIFIED_WORKSPACE`` unset), else it adds its own
    ``CUBLASLT_WORKSPACE_SIZE`` KiB (default 1024)."""
    env = os.environ if env is None else env
    config = env.get("CUBLAS_WORKSPACE_CONFIG")
    default = 4096 * 8 * 1024 if tuple(capability) >= (9, 0) else 4096 * 1024 * 2 + 16 * 1024 * 8
    size = default
    if config:
        pairs = re.findall(r":([0-9]+):([0-9]+)", config)
        size = sum(int(kib) * 1024 * int(count) for kib, count in pairs) if pairs else default
    if env.get("TORCH_CUBLASLT_UNIFIED_WORKSPACE", "1").lower() in ("0", "false"):
        size += int(env.get("CUBLASLT_WORKSPACE_SIZE", "1024")) * 1024
    return size


# --------------------------------------------------------------------------------------------
# SDPA


def sdpa_backend(query, key, value, attn_mask=None, dropout_p: float = 0.0, capability=PLANNING_CAPABILITY) -> str:
    """"flash", "efficient" or "math": the backend ``sdp_utils.cpp`` selects on CUDA for these
    inputs (priority flash > memory-efficient > math; cuDNN attention, which recent torch tries
    first on sm90/sm100 with new cuDNN, is not modelled and saves about what flash saves).

    flash: 4-D q/k/v, fp16/bf16, no attn_mask, equal head dims <= 256, sm80+.
    memory-efficient: 4-D, fp32/fp16/bf16, any mask, equal q/k head dims, sm50+ (bf16: sm80+)."""
    import torch

    low = query.dtype in (torch.float16, torch.bfloat16)
    same_dtype = query.dtype == key.dtype == value.dtype
    four_d = query.dim() == key.dim() == value.dim() == 4
    head = query.shape[-1]
    if (four_d and same_dtype and low and attn_mask is None and head == key.shape[-1] == value.shape[-1]
            and head <= 256 and tuple(capability) >= (8, 0)):
        return "flash"
    if (four_d and same_dtype and query.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and head == key.shape[-1] and (query.dtype != torch.bfloat16 or tuple(capability) >= (8, 0))):
        return "efficient"
    return "math"


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention through the aten op of the CUDA backend it would use."""
    import torch

    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # attention.cpp convert_boolean_attn_mask: where(~mask, -inf, 0) in the query's dtype
        attn_mask = torch.where(attn_mask.logical_not(), torch.full((), float("-inf"), dtype=query.dtype),
                                torch.zeros((), dtype=query.dtype))
    backend = sdpa_backend(query, key, value, attn_mask, dropout_p, device_capability())
    if enable_gqa and key.shape[-3] != query.shape[-3] and backend == "efficient":
        backend = "math"  # the memory-efficient kernel has no GQA (sdp_utils.cpp)
    if backend == "flash":
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    if backend == "efficient":
        if attn_mask is not None and attn_mask.shape[-1] % 16:
            # attention.cpp preprocess_mask: the bias's last dim padded to 16 elements, then sliced
            last = attn_mask.shape[-1]
            padded = attn_mask.new_empty((*attn_mask.shape[:-1], -(-last // 16) * 16))
            attn_mask = padded[..., :last].copy_(attn_mask)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, needs_grad, dropout_p, is_causal, scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_attention_math(
        query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa)[0]


# --------------------------------------------------------------------------------------------
# autocast


def _fake_cuda_like(t, mode):
    import torch

    with mode:
        return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="cuda")


# the functions whose fp32 autocast policy passes dtype=float32 instead of casting the input
# ("fp32_set_opt_dtype" in aten/src/ATen/autocast_mode.cpp); whether a call takes it is still
# decided by the AutocastCUDA kernel (the output dtype it gives)
_SET_OPT_DTYPE = {"softmax", "log_softmax", "softmin", "sum", "prod", "cumsum", "cumprod", "nansum", "norm",
                  "linalg_vector_norm", "linalg_matrix_norm", "vector_norm", "matrix_norm"}


def autocast_casts(func, args: tuple, kwargs: dict, dtype) -> dict:
    """{index of a tensor leaf of (args, kwargs): the dtype CUDA autocast casts it to} for one call,
    from PyTorch's AutocastCUDA kernels run on fake CUDA copies of the tensors; plus
    ``{"dtype": torch.float32}`` for the ops autocast runs in fp32 through their ``dtype`` argument
    instead of casting (softmax, log_softmax, sum, prod, cumsum, ...: "fp32_set_opt_dtype" in
    ``aten/src/ATen/autocast_mode.cpp``). For a Python-level composite (``F.multi_head_attention_forward``)
    only the casts of its inputs are returned, the first one per input: the dtypes of its
    intermediates follow from them, not from their own autocast policy."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
    from torch.utils._pytree import tree_flatten, tree_unflatten

    leaves, spec = tree_flatten((args, kwargs))
    casts: dict[int, Any] = {}

    class _Casts(TorchDispatchMode):
        def __torch_dispatch__(self, op, types, a=(), kw=None):
            kw = kw or {}
            if op is torch.ops.aten._to_copy.default and "dtype" in kw and id(a[0]) in index:
                casts.setdefault(index[id(a[0])], kw["dtype"])  # a composite's first use decides
            return op(*a, **kw)

    with _disable_current_modes(), torch._C.DisableTorchFunction():
        mode = FakeTensorMode(allow_non_fake_inputs=False)
        copies = [_fake_cuda_like(x, mode) if isinstance(x, torch.Tensor) else x for x in leaves]
        index = {id(c): i for i, c in enumerate(copies) if isinstance(c, torch.Tensor)}
        cuda_args, cuda_kwargs = tree_unflatten(copies, spec)
        previous = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", dtype)
        torch.autocast_increment_nesting()
        try:
            with torch.no_grad(), mode, _Casts():
                out = func(*cuda_args, **cuda_kwargs)
            low = [i for i, x in enumerate(leaves)
                   if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16)]
            if not casts and low and isinstance(out, torch.Tensor) and out.dtype == torch.float32:
                torch.set_autocast_enabled("cuda", False)
                with torch.no_grad(), mode:
                    plain = func(*cuda_args, **cuda_kwargs)
                if plain.dtype != out.dtype:  # autocast ran the call in fp32 without casting its inputs
                    if getattr(func, "__name__", "") in _SET_OPT_DTYPE and "dtype" not in kwargs:
                        casts["dtype"] = torch.float32
                    else:  # inside a composite (cross_entropy: log_softmax in fp32): cast the inputs
                        casts.update(dict.fromkeys(low, torch.float32))
        except Exception:  # noqa: BLE001 - an op the fake CUDA path cannot run: no casts known
            casts.clear()
        finally:
            if torch.autocast_decrement_nesting() == 0:
                torch.clear_autocast_cache()
            torch.set_autocast_enabled("cuda", previous[0])
            torch.set_autocast_dtype("cuda", previous[1])
    return casts


def _key(func, leaves) -> tuple | None:
    import torch

    parts = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append(leaf.dtype)
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            parts.append(leaf)
        else:
            parts.append(type(leaf).__name__)
    key = (func, tuple(parts))
    try:
        hash(key)
    except TypeError:
        return None
    return key


_NO_TENSOR_WORK = ("__get__", "size", "dim", "numel", "stride", "data_ptr", "requires_grad_", "is_floating_point")


class CudaEmulation:
    """While active, every torch call of the forward sees CUDA's autocast casts (when ``dtype`` is
    set) and CUDA's SDPA backend. Use as a context manager around the autocast region."""

    active: "CudaEmulation | None" = None  # the emulation whose region is running, if any

    def __init__(self, dtype=None) -> None:
        self.dtype = dtype
        self.casts: dict[tuple, dict[int, Any]] = {}  # cached per (function, argument dtypes)
        self.weight_cache: dict[int, Any] = {}  # autocast's cache of cast leaf tensors
        self._mode = self._new_mode()
        self._outer: CudaEmulation | None = None

    @contextlib.contextmanager
    def recompute_region(self):
        """A context that applies this emulation again: activation checkpointing recomputes a
        block in backward, outside the forward's region, and torch.utils.checkpoint restores the
        forward's autocast state there (``context_fn``; see parallel/fsdp.apply_checkpointing).
        Like that autocast region, it drops its cast weights when it ends."""
        with self._new_mode():
            try:
                yield
            finally:
                self.weight_cache.clear()

    def _new_mode(self):
        from torch.overrides import TorchFunctionMode

        emulation = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return emulation._call(func, args, kwargs or {})

        return _Mode()

    def __enter__(self):
        self._outer, CudaEmulation.active = CudaEmulation.active, self
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        CudaEmulation.active = self._outer
        self.weight_cache.clear()  # autocast drops its cache when the region ends
        return self._mode.__exit__(*exc)

    def _call(self, func, args, kwargs):
        import torch
        from torch.utils._pytree import tree_flatten, tree_unflatten

        if getattr(func, "__name__", "") in _NO_TENSOR_WORK:
            return func(*args, **kwargs)
        if self.dtype is not None:
            leaves, spec = tree_flatten((args, kwargs))
            if any(isinstance(x, torch.Tensor) and x.is_floating_point() for x in leaves):
                key = _key(func, leaves)
                casts = self.casts.get(key) if key is not None else None
                if casts is None:
                    casts = autocast_casts(func, args, kwargs, self.dtype)
                    if key is not None:
                        self.casts[key] = casts
                if casts:
                    leaves = [self._cast(x, casts[i]) if i in casts else x for i, x in enumerate(leaves)]
                    args, kwargs = tree_unflatten(leaves, spec)
                    if "dtype" in casts:
                        kwargs = {**kwargs, "dtype": casts["dtype"]}
        if func is torch.nn.functional.scaled_dot_product_attention:
            return _sdpa(*args, **kwargs)
        return func(*args, **kwargs)

    def _cast(self, tensor, dtype):
        if tensor.dtype == dtype:
            return tensor
        cacheable = tensor.is_leaf and tensor.requires_grad  # autocast caches cast weights only
        if cacheable and (id(tensor), dtype) in self.weight_cache:
            return self.weight_cache[(id(tensor), dtype)]
        cast = tensor.to(dtype)
        if cacheable:
            self.weight_cache[(id(tensor), dtype)] = cast
        return cast


# --------------------------------------------------------------------------------------------
# the report


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


_GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "addmv", "mv", "_scaled_mm", "addmm_activation"}


def finish_cuda_report(report, trace, last_step: int, host_steps: bool = True, capability=None) -> None:
    """Add what the CUDA target knows beyond the tensors to a simulated ``MemoryReport``: the
    cuBLAS workspaces (one per thread that runs a GEMM: the step's own thread, and autograd's
    device thread in backward: ``CublasHandlePool.cpp`` keeps one per (handle, stream) and handles
    are per thread) and the caching allocator's view (``cuda_allocator.replay`` of every allocation
    and free of the simulation, peaks reset when the last step starts): reserved bytes, and blocks
    charged whole where the allocator does not split them. ``host_steps``: the optimizer keeps its
    ``step`` counters on the host (torch.optim Adam/AdamW unless fused or capturable), so they take
    no GPU block (the simulation, on CPU tensors, counted one 512-byte block each)."""
    from .cuda_allocator import replay

    steps = [r for r in trace.storages if host_steps and r.category == "optimizer_state"
             and (r.description or "").startswith("step of")]
    if steps:
        on_host = sum(r.nbytes for r in steps)
        report.peak_bytes -= on_host
        report.breakdown["optimizer_state"] -= on_host
        on_host_ids = {id(r) for r in steps}
        trace.storages = [r for r in trace.storages if id(r) not in on_host_ids]
    capability = capability or device_capability()
    phases = {record.phase for record in trace.storages if record.op in _GEMM_OPS}
    threads = int(bool(phases & {"forward", "loss", "optimizer"})) + int("backward" in phases)
    workspace = cublas_workspace_bytes(capability)
    events = [(-1 - i, workspace) for i in range(threads)]  # allocated at the first GEMM, kept
    order = []
    for key, record in enumerate(trace.storages):
        order.append((record.alloc_event, key, record.nbytes))
        if record.free_event is not None:
            order.append((record.free_event, key, -record.nbytes))
    order.sort()
    first = min((r.alloc_event for r in trace.storages if r.step == last_step), default=0)
    reset_at = len(events) + sum(1 for event, _, _ in order if event < first)
    events += [(key, nbytes) for _, key, nbytes in order]
    allocator = replay(events, reset_at)
    report.peak_bytes += threads * workspace
    report.breakdown["temporaries"] = report.breakdown.get("temporaries", 0) + threads * workspace
    unsplit = allocator.peak_allocated - report.peak_bytes
    if unsplit > 0:  # whole large blocks charged for requests the allocator did not split
        report.peak_bytes += unsplit
        report.breakdown["temporaries"] += unsplit
        report.notes.append(f"CUDA: {unsplit} bytes of unsplit allocator blocks (a large block's rest <= 1 MiB) "
                            "counted, as max_memory_allocated counts them")
    report.reserved_bytes = max(allocator.peak_reserved, report.peak_bytes)
    report.fragmentation_bytes = report.reserved_bytes - report.peak_bytes
    convolutions = [r.nbytes for r in trace.storages if r.op in ("convolution", "convolution_backward")]
    if convolutions:  # flagged: cuDNN's algorithm choice decides, from none to about an operand
        report.confidence = "low"
        report.notes.append(
            f"CUDA: cuDNN convolution workspaces are not in the peak; bounded estimate: up to {max(convolutions):,} "
            "bytes more (the largest convolution operand) if cuDNN picks a workspace-hungry algorithm"
        )
    arch = f"sm{capability[0]}{capability[1]}" + ("" if _has_gpu() else " assumed: no GPU here")
    if threads:
        report.notes.append(
            f"CUDA: {threads} cuBLAS workspace(s) of {workspace / 2**20:.3g} MiB included ({arch}, "
            "CUBLAS_WORKSPACE_CONFIG; CublasHandlePool.cpp)"
        )
    report.notes.append(
        "CUDA target: peak counts 512-byte allocator blocks (max_memory_allocated); reserved_bytes replays the "
        "caching allocator's segments (max_memory_reserved, what an OOM is about); autocast casts are CUDA's own"
    )
