"""Paths through the graph: FXA103 deep-plain-stack (gradient depth without residual paths) and
FXA104 missing-normalization (weight layers in a row without a norm)."""

from __future__ import annotations

import math
from typing import Iterable

from ...findings import Finding, Rule, Severity
from .base import DOCS, Context, is_norm, op_name, register

FXA103 = Rule(
    code="FXA103",
    name="deep-plain-stack",
    severity=Severity.ERROR,
    message="gradients must cross {depth} weight layers with no residual path, from '{start}' to '{end}' (limit {limit}): add residual connections",
    why=(
        "Plain stacks get harder to optimise with depth: a 56-layer plain network trains to a "
        "higher training error than a 20-layer one (He et al., 2016). The depth counted is the "
        "fewest weight layers (Linear, Conv, Embedding, RNN; not norms) on any path from a layer to "
        "the output, so residual adds, concatenations and auxiliary heads shorten it."
    ),
    fix="Wrap groups of layers in residual blocks (out = x + block(x)), or make the stack shallower.",
    references=("https://arxiv.org/abs/1512.03385",),
    bad=(
        "model = nn.Sequential(*[m for _ in range(24) for m in (nn.Linear(32, 32), nn.LayerNorm(32), nn.ReLU())])\n"
        "inputs = [(4, 32)]\n",
    ),
    good=(
        "class Block(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.norm, self.fc = nn.LayerNorm(32), nn.Linear(32, 32)\n"
        "    def forward(self, x):\n"
        "        return x + torch.relu(self.fc(self.norm(x)))\n"
        "model = nn.Sequential(*[Block() for _ in range(24)])\n"
        "inputs = [(4, 32)]\n",
    ),
)


@register(FXA103)
def _check_plain_depth(ctx: Context) -> Iterable[Finding]:
    g = ctx.graph
    depth: dict[str, int] = {}
    nxt: dict[str, str | None] = {}
    sinks = [r for r in g.layers if not g.consumers[r.node]]
    # an unused tuple element (`out, _ = self.lstm(x)`) is a dead end, not an output
    dead = {r.node for r in sinks if op_name(r) == "getitem"} if any(op_name(r) != "getitem" for r in sinks) else set()
    for rec in reversed(g.layers):
        w = 1 if g.is_weight_layer(rec) else 0
        best, best_c = (math.inf if rec.node in dead else 0), None
        for c in g.consumers[rec.node]:
            if best_c is None or depth[c] < best:
                best, best_c = depth[c], c
        depth[rec.node], nxt[rec.node] = w + best, best_c
    weight_nodes = [r for r in g.layers if g.is_weight_layer(r) and depth[r.node] != math.inf]
    if not weight_nodes:
        return
    start = max(weight_nodes, key=lambda r: depth[r.node])  # first in order among equals
    if depth[start.node] <= ctx.config.max_plain_depth:
        return
    chain, node = [], start.node
    while node is not None:
        if g.is_weight_layer(g.by_node[node]):
            chain.append(node)
        node = nxt[node]
    first, last = g.by_node[chain[0]].name, g.by_node[chain[-1]].name
    yield FXA103.finding(ctx.locate(first, start.node),
                         {"depth": depth[start.node], "limit": ctx.config.max_plain_depth, "start": first, "end": last},
                         depth=depth[start.node], start=first, end=last, limit=ctx.config.max_plain_depth)


FXA104 = Rule(
    code="FXA104",
    name="missing-normalization",
    severity=Severity.WARNING,
    message="{length} weight layers in a row without normalization, from '{start}' to '{end}' (limit {limit}): add BatchNorm/LayerNorm/RMSNorm",
    why=(
        "Without normalization the scale of activations and gradients drifts multiplicatively "
        "from layer to layer, so deep stacks need careful initialisation and small learning rates "
        "to train at all. A BatchNorm, LayerNorm, GroupNorm, RMSNorm or InstanceNorm every few "
        "layers keeps them in range."
    ),
    fix="Insert a normalization layer after every conv/linear (nn.BatchNorm2d for CNNs, nn.LayerNorm or nn.RMSNorm for MLPs and transformers).",
    references=(f"{DOCS}/nn.html#normalization-layers", "https://arxiv.org/abs/1502.03167"),
    bad=(
        "model = nn.Sequential(*[m for _ in range(10) for m in (nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())])\n"
        "inputs = [(1, 8, 16, 16)]\n",
    ),
    good=(
        "model = nn.Sequential(*[m for _ in range(10) for m in (nn.Conv2d(8, 8, 3, padding=1, bias=False),\n"
        "                                                        nn.BatchNorm2d(8), nn.ReLU())])\n"
        "inputs = [(1, 8, 16, 16)]\n",
    ),
)


@register(FXA104)
def _check_missing_norm(ctx: Context) -> Iterable[Finding]:
    g = ctx.graph
    run: dict[str, int] = {}
    prev: dict[str, str | None] = {}
    for rec in g.layers:
        if is_norm(rec):
            run[rec.node], prev[rec.node] = 0, None
            continue
        best, best_p = 0, None
        for p in g.producers[rec.node]:
            if run[p] > best:
                best, best_p = run[p], p
        run[rec.node] = best + (1 if g.is_weight_layer(rec) else 0)
        prev[rec.node] = best_p
    if not run:
        return
    end = max(g.layers, key=lambda r: run[r.node])
    length = run[end.node]
    if length < ctx.config.max_unnormalized:
        return
    chain, node = [], end.node
    while node is not None:
        if g.is_weight_layer(g.by_node[node]):
            chain.append(node)
        node = prev[node]
    first, last = g.by_node[chain[-1]].name, g.by_node[chain[0]].name
    yield FXA104.finding(ctx.locate(first, chain[-1]),
                         {"length": length, "limit": ctx.config.max_unnormalized, "start": first, "end": last},
                         length=length, start=first, end=last, limit=ctx.config.max_unnormalized)
