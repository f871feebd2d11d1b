"""Layer-by-layer shape checks: FXA101 oversized-linear, FXA102 large-conv-kernel, FXA107
bias-before-batchnorm."""

from __future__ import annotations

import math
from typing import Any, Iterable

from ...findings import Finding, Rule, Severity
from ..records import LayerRecord
from .base import DOCS, Context, op_name, register

FXA101 = Rule(
    code="FXA101",
    name="oversized-linear",
    severity=Severity.ERROR,
    message="Linear '{module}' holds {params} params ({share} of the model){fed_by}: {remedy}",
    why=(
        "A fully connected layer on a flattened feature map multiplies its parameter count by the "
        "spatial size (VGG-16's classifier.0 holds 102.8M params, 74% of the model). Those weights "
        "cost memory, optimizer state and overfitting capacity while adding little accuracy. "
        "Reported for a Linear above 1M params (linear-max-params) that is fed by a flatten of a "
        "spatial feature map or holds at least half of all params (linear-max-share)."
    ),
    fix=(
        "Pool the feature map first (nn.AdaptiveAvgPool2d(1) + Flatten) or add a narrow bottleneck "
        "(a 1x1 conv or a small Linear) before the large Linear."
    ),
    references=(
        f"{DOCS}/generated/torch.nn.AdaptiveAvgPool2d.html",
        "https://arxiv.org/abs/1312.4400",
    ),
    bad=(
        "model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 32 * 32, 100))\n"
        "inputs = [(2, 3, 32, 32)]\n",
        "model = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 10))\n"
        "inputs = [(2, 256)]\n",
    ),
    good=(
        "model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                      nn.Flatten(), nn.Linear(64, 10))\n"
        "inputs = [(2, 3, 32, 32)]\n",
        "model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))\n"
        "inputs = [(2, 256)]\n",
    ),
)


@register(FXA101)
def _check_oversized_linear(ctx: Context) -> Iterable[Finding]:
    cfg = ctx.config
    total = max(ctx.total_params, 1)
    for rec in ctx.graph.layers:
        if op_name(rec) not in ("linear", "lazylinear") or rec.params <= cfg.linear_max_params:
            continue
        share = rec.params / total
        fed_by, remedy = "", "add a bottleneck or shrink it"
        source, reshaped = ctx.graph.source_through_reshapes(rec)
        if reshaped and source is not None and source.output_shape and len(source.output_shape) >= 3:
            spatial = source.output_shape[2:]
            in_features = (rec.extra or {}).get("in_features", math.prod(source.output_shape[1:]))
            if math.prod(spatial) > 1 and in_features == math.prod(source.output_shape[1:]):
                channels = source.output_shape[1]
                size = "x".join(str(s) for s in spatial)
                fed_by = f", fed by a flatten of '{source.name}' ({channels} channels x {size})"
                remedy = "pool it first (nn.AdaptiveAvgPool2d(1)) or add a bottleneck"
        if not fed_by and share < cfg.linear_max_share:
            continue
        data = {"params": rec.params, "share": round(share, 4), "threshold": cfg.linear_max_params}
        if fed_by:
            data.update(producer=source.name, spatial=list(source.output_shape[2:]), channels=source.output_shape[1])
        yield FXA101.finding(ctx.locate(rec.name, rec.node), data, module=rec.name, params=f"{rec.params:,}",
                             share=f"{share:.0%}", fed_by=fed_by, remedy=remedy)


def _kernel_of(rec: LayerRecord, model: Any) -> tuple[tuple[int, ...], int, int | None, tuple[int, ...]]:
    """(kernel_size, groups, in_channels, stride) from the record's extra or the live module."""
    extra = rec.extra or {}
    kernel, groups, in_ch, stride = extra.get("kernel_size"), extra.get("groups"), extra.get("in_channels"), extra.get("stride")
    if (kernel is None or groups is None) and model is not None and rec.kind == "module":
        try:
            mod = model.get_submodule(rec.name)
            kernel, groups = getattr(mod, "kernel_size", kernel), getattr(mod, "groups", groups)
            in_ch, stride = getattr(mod, "in_channels", in_ch), getattr(mod, "stride", stride)
        except AttributeError:
            pass
    as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else ((v,) if v is not None else ())  # noqa: E731
    return as_tuple(kernel), int(groups or 1), in_ch, as_tuple(stride)


FXA102 = Rule(
    code="FXA102",
    name="large-conv-kernel",
    severity=Severity.WARNING,
    message="Conv '{module}' uses a {kernel} kernel ({params} params): stack 3x3 convs or use a depthwise conv",
    why=(
        "A kxk kernel costs k^2 MACs per output per channel pair: one 11x11 conv costs 13x a 3x3 "
        "for the same receptive-field step, and two stacked 3x3 convs see 5x5 with fewer params "
        "and an extra non-linearity (VGG's argument). Depthwise convs (groups == channels) and "
        "patchify stems (stride == kernel) are exempt."
    ),
    fix="Replace the kxk conv by a stack of 3x3 convs (or a 7x7 depthwise conv followed by a 1x1 conv).",
    references=(f"{DOCS}/generated/torch.nn.Conv2d.html", "https://arxiv.org/abs/1409.1556"),
    bad=(
        "model = nn.Sequential(nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.BatchNorm2d(64), nn.ReLU())\n"
        "inputs = [(1, 3, 64, 64)]\n",
        "model = nn.Sequential(nn.Conv1d(16, 16, 9, padding=4), nn.ReLU())\n"
        "inputs = [(1, 16, 100)]\n",
    ),
    good=(
        "model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),\n"
        "                      nn.Conv2d(64, 64, 3, padding=1))\n"
        "inputs = [(1, 3, 64, 64)]\n",
        "model = nn.Sequential(nn.Conv2d(3, 96, 16, stride=16), nn.Conv2d(96, 96, 7, padding=3, groups=96))\n"
        "inputs = [(1, 3, 64, 64)]\n",
    ),
)


@register(FXA102)
def _check_large_kernel(ctx: Context) -> Iterable[Finding]:
    for rec in ctx.graph.layers:
        if rec.kind != "module" or not op_name(rec).startswith("conv"):
            continue
        kernel, groups, in_ch, stride = _kernel_of(rec, ctx.model)
        if not kernel or max(kernel) <= ctx.config.max_kernel:
            continue
        if in_ch is not None and groups == in_ch and groups > 1:
            continue  # depthwise
        if stride and tuple(stride) == tuple(kernel):
            continue  # patchify stem (ViT patch embedding)
        label = "x".join(str(k) for k in kernel)
        yield FXA102.finding(ctx.locate(rec.name, rec.node), {"kernel_size": list(kernel), "params": rec.params,
                                                               "limit": ctx.config.max_kernel},
                             module=rec.name, kernel=label, params=f"{rec.params:,}")


FXA107 = Rule(
    code="FXA107",
    name="bias-before-batchnorm",
    severity=Severity.WARNING,
    message="'{module}' has a bias ({bias} params) but feeds BatchNorm '{norm}', which subtracts the mean: use bias=False",
    why=(
        "BatchNorm subtracts the per-channel batch mean, so a constant bias added just before it "
        "cancels out exactly: its parameters and their optimizer state are wasted and its "
        "gradient is always zero."
    ),
    fix="Construct the conv/linear with bias=False when a BatchNorm follows it.",
    references=(
        f"{DOCS}/generated/torch.nn.BatchNorm2d.html",
        "https://pytorch.org/tutorials/recipes/recipes/tuning_guide.html#disable-bias-for-convolutions-directly-followed-by-a-batch-norm",
    ),
    bad=(
        "model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())\n"
        "inputs = [(2, 3, 16, 16)]\n",
        "model = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU())\n"
        "inputs = [(4, 32)]\n",
    ),
    good=(
        "model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())\n"
        "inputs = [(2, 3, 16, 16)]\n",
        "model = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU())\n"
        "inputs = [(4, 32)]\n",
    ),
)


@register(FXA107)
def _check_bias_before_bn(ctx: Context) -> Iterable[Finding]:
    g = ctx.graph
    for rec in g.layers:
        op = op_name(rec)
        if rec.kind != "module" or not (op == "linear" or op.startswith("conv")):
            continue
        consumers = g.consumers[rec.node]
        if len(consumers) != 1:
            continue
        bn = g.by_node[consumers[0]]
        if not op_name(bn).startswith("batchnorm") and "batch_norm" not in op_name(bn):
            continue
        bias = (rec.extra or {}).get("bias")
        out_features = rec.output_shape[1] if rec.output_shape and len(rec.output_shape) > 1 else 0
        if bias is None and ctx.model is not None:
            try:
                b = ctx.model.get_submodule(rec.name).bias
                bias = b is not None
                out_features = b.numel() if b is not None else out_features
            except AttributeError:
                bias = None
        if not bias:
            continue
        bias_params = out_features if isinstance(bias, bool) else int(bias)
        yield FXA107.finding(ctx.locate(rec.name, rec.node), {"bias_params": bias_params, "norm": bn.name},
                             module=rec.name, bias=f"{bias_params:,}", norm=bn.name)
