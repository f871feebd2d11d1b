"""The CPU target: oneDNN workspaces and ATen scratch that fake kernels do not show.

oneDNN reorders convolution operands into blocked layouts and packs bf16 GEMM operands, the RNN
kernels keep a workspace that the fake kernel reports as empty, and low-precision full
reductions go through an fp32 copy. The formulas were fitted to ``torch.profiler`` measurements
of the real CPU kernels (torch 2.13, fp32 unless stated).
"""

from __future__ import annotations

from . import WorkspaceRule

__all__ = ["cpu_rules"]


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


_FITTED = "fitted to torch.profiler measurements of the real CPU kernels (torch 2.13)"
_RULES = (
    WorkspaceRule("mm", _mm, _FITTED),
    WorkspaceRule("bmm", _mm, _FITTED),
    WorkspaceRule("addmm", _addmm, _FITTED),
    WorkspaceRule("mean", _low_precision_reduction, "ATen's CPU sum/mean of bf16/fp16 accumulates in fp32"),
    WorkspaceRule("sum", _low_precision_reduction, "ATen's CPU sum/mean of bf16/fp16 accumulates in fp32"),
    WorkspaceRule("convolution", _conv_forward, "oneDNN blocked-layout reorders of output and weight"),
    WorkspaceRule("convolution_backward", _conv_backward, "oneDNN blocked-layout reorders of the operands"),
    WorkspaceRule("mkldnn_rnn_layer", _rnn_layer_forward, _FITTED, exact=False),
    WorkspaceRule("mkldnn_rnn_layer_backward", _rnn_layer_backward, _FITTED, exact=False),
)


def cpu_rules() -> dict[str, WorkspaceRule]:
    return {rule.op: rule for rule in _RULES}
