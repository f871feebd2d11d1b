"""The CPU target: oneDNN workspaces and ATen scratch that fake kernels do not show.

oneDNN reorders convolution operands into blocked layouts, its bf16/fp16 GEMMs keep scratch
buffers, the RNN kernels keep a workspace that the fake kernel reports as empty, and ATen's
low-precision full reductions go through an fp32 copy. The fitted numbers come from
``bench/fit_cpu_workspace.py`` and its data (``torch.profiler`` measurements of the real kernels,
torch 2.13, at every instruction set the measuring CPU runs); a test refits them. The GEMM scratch
depends on the instruction set oneDNN runs (``onednn_isa``), so the rules are built per process.
"""

from __future__ import annotations

import functools
import os

from .workspace import WorkspaceRule

__all__ = ["cpu_rules", "gemm_kernel", "gemm_scratch", "onednn_isa", "rnn_bytes", "supported_isas"]

# oneDNN's instruction-set levels (oneDNN 3.x names, ``ONEDNN_MAX_CPU_ISA`` values) with the
# /proc/cpuinfo flags each adds to the level below it, lowest first.
_ISA_FLAGS = {
    "AVX2": {"avx2", "fma"},
    "AVX512_CORE": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "AVX512_CORE_VNNI": {"avx512_vnni"},
    "AVX512_CORE_BF16": {"avx512_bf16"},
    "AVX10_1_512": {"avx512_fp16"},
    "AVX10_1_512_AMX": {"amx_tile", "amx_int8", "amx_bf16"},
    "AVX10_1_512_AMX_FP16": {"amx_fp16"},
}
_LEVELS = tuple(_ISA_FLAGS)
_ALIASES = {"AVX512_CORE_FP16": "AVX10_1_512", "AVX512_CORE_AMX": "AVX10_1_512_AMX",
            "AVX512_CORE_AMX_FP16": "AVX10_1_512_AMX_FP16"}


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def supported_isas() -> tuple[str, ...]:
    """The oneDNN ISA levels of this list that the CPU runs (from /proc/cpuinfo; empty elsewhere)."""
    flags = _cpu_flags()
    if flags is None:
        return ()
    levels, needed = [], set()
    for level in _LEVELS:
        needed |= _ISA_FLAGS[level]
        if not needed <= flags:
            break
        levels.append(level)
    return tuple(levels)


# The oneDNN kernel that runs a bf16/fp16 matmul at each ISA level (ONEDNN_VERBOSE=1, torch 2.13,
# oneDNN 3.12). ATen hands bf16 matmuls to oneDNN from AVX512_CORE up and fp16 ones from
# AVX10_1_512 up (ideep's has_bf16_type_support / has_fp16_type_support); below, ATen's own
# kernels run them without scratch.
_GEMM_KERNELS = {
    "bfloat16": {
        "AVX512_CORE": "gemm:jit:bf16",
        "AVX512_CORE_VNNI": "gemm:jit:bf16",
        "AVX512_CORE_BF16": "brg_matmul:avx512_core_bf16",
        "AVX10_1_512": "brg_matmul:avx512_core_bf16",
        "AVX10_1_512_AMX": "brg_matmul:avx10_1_512_amx",
        "AVX10_1_512_AMX_FP16": "brg_matmul:avx10_1_512_amx",
    },
    "float16": {
        "AVX10_1_512": "brg_matmul:avx10_1_512",
        "AVX10_1_512_AMX": "brg_matmul:avx10_1_512",
        "AVX10_1_512_AMX_FP16": "brg_matmul:avx10_1_512_amx_fp16",
    },
}


def gemm_kernel(isa: str | None, dtype: str) -> str | None:
    """The oneDNN matmul kernel for a bf16/fp16 ("bfloat16"/"float16") GEMM at ``isa``; None where
    ATen runs it without oneDNN."""
    return _GEMM_KERNELS.get(dtype, {}).get(isa)


def onednn_isa() -> str | None:
    """The instruction set oneDNN's CPU kernels use in this process: the highest level the CPU
    runs, capped by ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``), which oneDNN reads
    once when it initialises. None when unknown: no /proc/cpuinfo, or a cap this table does not
    know (a newer level)."""
    levels = supported_isas()
    if not levels:
        return None
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    cap = _ALIASES.get(cap, cap)
    if cap in ("ALL", "DEFAULT", ""):
        return levels[-1]
    if cap in ("SSE41", "AVX", "AVX2_VNNI", "AVX2_VNNI_2"):
        return "AVX2"  # below AVX-512: no oneDNN bf16/fp16 GEMM, as at AVX2
    if cap in _LEVELS:
        return _LEVELS[min(_LEVELS.index(cap), len(levels) - 1)]
    return None  # a level newer than this table


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if t is not None and hasattr(t, "numel") else 0


def _conv_forward(args, outputs):
    # oneDNN computes into a blocked-layout buffer and reorders the weight: output + weight extra
    return {}, _nbytes(outputs[0]) + _nbytes(args[1])


def _conv_backward(args, outputs):
    # grad_output and input are reordered to blocked layouts during the backward kernel
    return {}, _nbytes(args[0]) + _nbytes(args[1]) + _nbytes(args[2])


# Fitted by bench/fit_cpu_workspace.py to bench/data/cpu_workspace.json (torch 2.13, fp32 LSTM
# layers, the same bytes at every ISA and thread count measured): the tightest linear upper
# envelopes of the measured bytes; tests/test_fx_cpu_workspace.py refits them from the data.
# Features: T*B*H*4 (one fp32 value per time step, batch row and hidden unit), (T+1)*B*max(I,H)*4
# (the layer states) or the fp32 bytes of w_ih + w_hh. bf16 layers are costed as fp32 (not measured).
RNN_WORKSPACE = (6.07, 9.45, 21000)  # x (T*B*H*4, (T+1)*B*max(I,H)*4, 1) in whole pages: saved for backward
RNN_FORWARD_SCRATCH = (4.13, 1.04, 24800)  # x (T*B*H*4, weight bytes, 1): alive while the forward kernel runs
RNN_BACKWARD_SCRATCH = (5.07, 2.1, 0.0)  # x (T*B*H*4, weight bytes, 1): alive while the backward kernel runs


def rnn_bytes(coefficients: tuple[float, ...], first: int, second: int, pages: bool = False) -> int:
    """coefficients . (first, second, 1), rounded up to whole 4 KiB pages if ``pages``."""
    a, b, c = coefficients
    total = int(a * first + b * second + c)
    return -(-total // 4096) * 4096 if pages else total


def _rnn_features(x, hidden_size: int, w_ih) -> tuple[int, int, int]:
    """(T*B*H*4, (T+1)*B*max(I, H)*4, fp32 bytes of w_ih + w_hh) of an mkldnn_rnn_layer input
    (T, B, I) or (T*B, I); oneDNN sizes its rows of layer states by max(I, H)."""
    steps, batch = (x.shape[0], x.shape[1]) if x.dim() == 3 else (x.shape[0], 1)
    states = (steps + 1) * batch * max(x.shape[-1], hidden_size) * 4
    return steps * batch * hidden_size * 4, states, 4 * w_ih.shape[0] * (w_ih.shape[1] + hidden_size)


def _rnn_layer_forward(args, outputs):
    # mkldnn_rnn_layer(input, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, batch_sizes, mode, hidden_size, ...)
    per_step, states, weights = _rnn_features(args[0], args[10], args[1])
    workspace = rnn_bytes(RNN_WORKSPACE, per_step, states, pages=True)
    return {3: workspace}, rnn_bytes(RNN_FORWARD_SCRATCH, per_step, weights)


def _rnn_layer_backward(args, outputs):
    # mkldnn_rnn_layer_backward(input, w1, w2, w3, w4, hx, cx, output, hy, cy, grad_output, ..., hidden_size=args[15])
    per_step, _, weights = _rnn_features(args[0], args[15], args[1])
    return {}, rnn_bytes(RNN_BACKWARD_SCRATCH, per_step, weights)


def _low_precision(t) -> bool:
    import torch

    return t.dtype in (torch.bfloat16, torch.float16)


# Fitted by bench/fit_cpu_workspace.py (see RNN_WORKSPACE): gemm:jit:bf16 (AVX512_CORE) computes
# into an fp32 copy of the output, c1 * M*N*4 + c0 bytes
GEMM_JIT_BF16 = (1.0, 128.0)


def _bracket(grid: tuple[int, ...], x: int) -> tuple[int, ...]:
    """Indices of the grid values around x (x's own if on the grid, the edge outside it)."""
    below = max([i for i, g in enumerate(grid) if g <= x], default=0)
    above = min([i for i, g in enumerate(grid) if g >= x], default=len(grid) - 1)
    return tuple({below, above})


def gemm_scratch(kernel: str | None, dtype: str, layout: str, threads: int, m: int, k: int, n: int, *,
                 jit: tuple[float, float] = GEMM_JIT_BF16, table: dict | None = None) -> int:
    """Transient bytes of a bf16/fp16 GEMM (M x K) @ (K x N) run by ``kernel`` (``gemm_kernel``;
    "*" when the ISA is unknown: the largest of all kernels) on ``threads`` threads. ``layout``:
    "a_b", "at_b" (the left operand transposed) or "a_bt" (the right one transposed).

    The brgemm kernels' scratch follows oneDNN's blocking heuristics (shapes, threads, cache
    sizes), not one formula: it is the largest measured value at the corners of the grid cell
    around (M, K, N) (the edge of the grid outside it). Measured with 1 and 2 threads; for more,
    the 2-thread bytes scale with the thread count (per-thread buffers)."""
    if kernel is None:
        return 0
    jit_bytes = int(jit[0] * m * n * 4 + jit[1]) if dtype == "bfloat16" else 0
    if kernel == "gemm:jit:bf16":
        return jit_bytes
    if table is None:
        from .cpu_gemm_table import GRID, SCRATCH

        table = {"GRID": GRID, "SCRATCH": SCRATCH}
    grid, scratch = table["GRID"], table["SCRATCH"]
    measured = 1 if threads <= 1 else 2
    keys = [key for key in scratch if key[1:] == (dtype, layout, measured) and kernel in ("*", key[0])]
    if not keys:  # a kernel that was not measured (e.g. AMX fp16): the largest of the measured ones
        keys = [key for key in scratch if key[1:] == (dtype, layout, measured)]
    sizes = (len(grid["k"]) * len(grid["n"]), len(grid["n"]))
    best = max(
        scratch[key][i * sizes[0] + j * sizes[1] + h]
        for key in keys for i in _bracket(grid["m"], m) for j in _bracket(grid["k"], k) for h in _bracket(grid["n"], n)
    )
    best = best * max(threads, 1) // measured
    return max(best, jit_bytes) if kernel == "*" else best


def _gemm_rule(isa: str | None):
    """(a, b) -> transient bytes of a CPU matmul of these operands at ``isa``."""

    def scratch(a, b) -> int:
        import torch

        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(a.dtype)
        if dtype is None or a.dim() < 2:
            return 0
        kernel = "*" if isa is None else gemm_kernel(isa, dtype)
        layout = "at_b" if not a.is_contiguous() else "a_bt" if not b.is_contiguous() else "a_b"
        return gemm_scratch(kernel, dtype, layout, torch.get_num_threads(), a.shape[-2], a.shape[-1], b.shape[-1])

    return scratch


def _low_precision_reduction(args, outputs):
    # a full CPU sum/mean of bf16/fp16 (the default loss) accumulates over an fp32 copy of the input
    full = len(args) == 1 or not args[1] or not isinstance(args[1], (list, tuple))
    return {}, args[0].numel() * 4 if full and _low_precision(args[0]) else 0


_DATA = "bench/data/cpu_workspace.json via bench/fit_cpu_workspace.py"


def cpu_rules() -> dict[str, WorkspaceRule]:
    """The CPU rules for the instruction set oneDNN uses in this process (``onednn_isa``)."""
    isa = onednn_isa()
    gemm = _gemm_rule(isa)
    gemm_source = f"{_DATA}, oneDNN ISA {isa or 'unknown: the largest over the ISAs measured'}"
    reduction = "ATen's CPU sum/mean of bf16/fp16 accumulates over an fp32 copy"
    rules = (
        WorkspaceRule("mm", lambda args, outputs: ({}, gemm(args[0], args[1])), gemm_source, exact=False),
        WorkspaceRule("bmm", lambda args, outputs: ({}, gemm(args[0], args[1])), gemm_source, exact=False),
        WorkspaceRule("addmm", lambda args, outputs: ({}, gemm(args[1], args[2])), gemm_source, exact=False),
        WorkspaceRule("mean", _low_precision_reduction, reduction),
        WorkspaceRule("sum", _low_precision_reduction, reduction),
        WorkspaceRule("convolution", _conv_forward, "oneDNN blocked-layout reorders of output and weight"),
        WorkspaceRule("convolution_backward", _conv_backward, "oneDNN blocked-layout reorders of the operands"),
        WorkspaceRule("mkldnn_rnn_layer", _rnn_layer_forward, _DATA, exact=False),
        WorkspaceRule("mkldnn_rnn_layer_backward", _rnn_layer_backward, _DATA, exact=False),
    )
    return {rule.op: rule for rule in rules}
