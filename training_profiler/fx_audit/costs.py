"""Cost formulas keyed by aten op: one small function per op, the counter knows none of them.

Conventions (the README quotes this):

- **FLOPs = 2 x MACs** for every op with a formula: all of them are matmul-like (``mm``, ``addmm``,
  ``bmm``, ``baddbmm``, convolutions, attention, recurrent layers), where one multiply-accumulate is
  one multiply plus one add.
- Where ``torch.utils.flop_counter`` has a formula we use *its* function, so our numbers agree with
  ``FlopCounterMode`` exactly. Like it, we **do not count bias additions** (``addmm``'s bias, the
  bias of a convolution or of a recurrent gate): they are O(output) next to the O(output x K) product.
- Formulas we add: CPU flash attention (``aten._scaled_dot_product_flash_attention_for_cpu`` and its
  backward; full, non-causal cost, as torch counts the other SDPA kernels), recurrent layers
  (``aten.mkldnn_rnn_layer``, ``aten.lstm``/``gru``/``rnn_*``: per token, one MAC per element of
  every input-to-hidden and hidden-to-hidden weight matrix; backward is twice the forward, for the
  input and the weight gradients), and ``_thnn_fused_lstm_cell`` / ``_thnn_fused_gru_cell``, which
  only combine gates already produced by matmuls (0).
- **Elementwise ops, normalisation, softmax, pooling, embedding lookups, data movement and views
  count 0 FLOPs** (as in ``FlopCounterMode`` and fvcore): they are memory-bound, and their cost is
  reported in bytes (output and saved-for-backward), not FLOPs. These are *known* zeros.
- Any other op is **uncounted**: the audit lists it with its share of the executed ops, never a
  silent zero.

This module imports torch: import it only from torch-using code paths.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import flop_counter as _fc

__all__ = ["COUNTED", "FREE", "is_free", "op_flops", "register_cost"]

aten = torch.ops.aten

# overload packet -> fn(*args, out_val=..., **kwargs) -> FLOPs. Starts as torch's own registry.
COUNTED: dict[Any, Callable[..., int]] = dict(_fc.flop_registry)


def register_cost(*ops: Any) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register ``fn(*args, out_val=None, **kwargs) -> FLOPs`` for aten ops (packets or overloads)."""

    def decorator(fn: Callable[..., int]) -> Callable[..., int]:
        for op in ops:
            COUNTED[getattr(op, "overloadpacket", op)] = fn
        return fn

    return decorator


@register_cost(aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, out_val: Any = None,
                    **kwargs: Any) -> int:
    return _fc.sdpa_flop_count(query.shape, key.shape, value.shape)


@register_cost(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _sdpa_cpu_backward_flops(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return _fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def _rnn_macs(input: torch.Tensor, weights: list[torch.Tensor]) -> int:
    """Every token passes once through every weight matrix (gates stacked along dim 0)."""
    tokens = input.numel() // input.shape[-1]
    return tokens * sum(w.numel() for w in weights if w.dim() == 2)


@register_cost(aten.mkldnn_rnn_layer)
def _mkldnn_rnn_layer_flops(input: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, *args: Any,
                            out_val: Any = None, **kwargs: Any) -> int:
    return 2 * _rnn_macs(input, [w_ih, w_hh])


@register_cost(aten.mkldnn_rnn_layer_backward)
def _mkldnn_rnn_layer_backward_flops(input: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, *args: Any,
                                     out_val: Any = None, **kwargs: Any) -> int:
    return 2 * 2 * _rnn_macs(input, [w_ih, w_hh])


@register_cost(aten.lstm.input, aten.gru.input, aten.rnn_tanh.input, aten.rnn_relu.input)
def _rnn_module_flops(input: torch.Tensor, hx: Any, params: list[torch.Tensor], *args: Any, out_val: Any = None,
                      **kwargs: Any) -> int:
    # Only stacked layers of equal width are exact here: layer l > 0 sees hidden-sized inputs, which the
    # weight shapes already encode, and each layer processes every token once.
    return 2 * _rnn_macs(input, list(params))


@register_cost(aten._thnn_fused_lstm_cell, aten._thnn_fused_lstm_cell_backward_impl, aten._thnn_fused_gru_cell,
               aten._thnn_fused_gru_cell_backward)
def _fused_cell_flops(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return 0  # the gate matmuls ran before, as mm/addmm, and are counted there


@register_cost(aten.convolution_backward)
def _conv_backward_flops(grad_out: Any, x: Any, w: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
                         transposed: bool, output_padding: Any, groups: int, output_mask: list[bool], *,
                         out_val: Any = None) -> int:
    # torch's formula, except that its weight-gradient term ignores ``groups`` (a depthwise conv's
    # backward would be ~``groups`` times too big): we count that term once per group.
    torch_formula = _fc.flop_registry[aten.convolution_backward]
    rest = (bias, stride, padding, dilation, transposed, output_padding, groups)
    grad_input = torch_formula(grad_out, x, w, *rest, [output_mask[0], False, False], out_val=out_val)
    grad_weight = torch_formula(grad_out, x, w, *rest, [False, output_mask[1], False], out_val=out_val)
    return grad_input + grad_weight // groups


# Known zeros beyond the ``pointwise`` tag and view ops (see the module docstring).
FREE = frozenset({
    "embedding", "embedding_dense_backward", "_embedding_bag", "native_layer_norm", "native_layer_norm_backward",
    "native_batch_norm", "native_batch_norm_backward", "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional", "_native_batch_norm_legit_no_training", "batch_norm_backward",
    "native_group_norm", "native_group_norm_backward", "_fused_rms_norm", "_fused_rms_norm_backward",
    "sum", "mean", "amax", "amin", "max", "min", "var_mean", "var", "std", "norm", "linalg_vector_norm", "cumsum",
    "prod", "argmax", "argmin", "any", "all", "sort", "topk",
    "_softmax", "_softmax_backward_data", "_safe_softmax", "_assert_tensor_metadata", "_log_softmax", "_log_softmax_backward_data",
    "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward", "mse_loss",
    "mse_loss_backward", "binary_cross_entropy", "binary_cross_entropy_backward",
    "binary_cross_entropy_with_logits", "smooth_l1_loss", "smooth_l1_loss_backward", "huber_loss",
    "max_pool2d_with_indices", "max_pool2d_with_indices_backward", "max_pool1d_with_indices",
    "max_pool3d_with_indices", "max_pool3d_with_indices_backward", "avg_pool2d", "avg_pool2d_backward",
    "avg_pool1d", "avg_pool3d", "avg_pool3d_backward", "_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward",
    "_adaptive_avg_pool3d", "_adaptive_avg_pool3d_backward", "adaptive_max_pool2d", "adaptive_max_pool2d_backward",
    "upsample_nearest2d", "upsample_nearest2d_backward", "upsample_bilinear2d", "upsample_bilinear2d_backward",
    "native_dropout", "native_dropout_backward", "bernoulli", "bernoulli_", "rand", "randn", "randint",
    "rand_like", "randn_like", "uniform_", "normal_", "threshold_backward", "hardswish_backward",
    "hardsigmoid_backward", "gelu_backward", "silu_backward", "sigmoid_backward", "tanh_backward",
    "leaky_relu_backward", "elu_backward", "softplus_backward", "mish_backward",
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "hardtanh", "hardtanh_", "elu", "elu_", "leaky_relu", "leaky_relu_", "softplus", "mish", "mish_", "threshold",
    "_prelu_kernel", "_prelu_kernel_backward", "glu", "glu_backward", "hardtanh_backward", "log_sigmoid_forward",
    "log_sigmoid_backward",
    "cat", "stack", "clone", "copy", "copy_", "_to_copy", "to", "contiguous", "empty", "empty_like",
    "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "fill", "fill_", "zero_",
    "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full", "arange", "scalar_tensor", "lift_fresh",
    "lift_fresh_copy", "detach", "detach_", "index_select", "gather", "scatter", "scatter_", "scatter_add",
    "scatter_add_", "index", "index_put", "index_put_", "_index_put_impl_", "index_add", "index_add_",
    "index_copy", "masked_fill", "masked_fill_", "masked_scatter", "masked_select", "where", "repeat",
    "repeat_interleave", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "tril", "triu", "tril_",
    "triu_", "flip", "roll", "one_hot", "slice_scatter", "select_scatter", "diagonal_scatter", "as_strided_scatter",
    "select_backward", "slice_backward", "unsafe_split", "unsafe_split_with_sizes", "split_with_sizes_copy",
    "unbind_copy", "_local_scalar_dense", "is_nonzero", "item", "equal", "is_same_size", "set_", "resize_",
    "_unsafe_view", "alias", "_assert_async", "_assert_scalar", "sym_constrain_range_for_size", "nonzero",
    "unique_consecutive", "_unique2", "bucketize", "searchsorted", "linspace", "logspace", "eye", "isin",
})


def is_free(func: Any) -> bool:
    """True for ops that cost 0 FLOPs by convention (pointwise, views, data movement, ...)."""
    if func.namespace != "aten":
        return True  # prim/profiler bookkeeping ops: metadata queries, no arithmetic
    if torch.Tag.pointwise in func.tags or func.is_view:
        return True
    return func.overloadpacket.__name__ in FREE


def op_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> int | None:
    """FLOPs of one aten op call, 0 for known zeros, ``None`` when no formula covers it."""
    formula = COUNTED.get(func.overloadpacket)
    if formula is not None:
        return int(formula(*args, **kwargs, out_val=out))
    return 0 if is_free(func) else None
