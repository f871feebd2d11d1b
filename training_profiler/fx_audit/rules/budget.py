"""FXA106 memory-peak: the predicted training-step peak against the budget, and dominant tensors."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from ...findings import Finding, Rule, Severity
from ...units import human_bytes
from .base import DOCS, Context, register

FXA106 = Rule(
    code="FXA106",
    name="memory-peak",
    severity=Severity.ERROR,
    message="{problem} at the training peak ({peak}, {phase}); largest: {top}: {knob}",
    why=(
        "The predicted training-step peak (parameters, gradients, optimizer state and the "
        "activations saved for backward) decides whether a step fits on the device. Error when it "
        "exceeds the memory budget (--memory or max-peak-memory), warning when one tensor of 64 MiB "
        "or more holds a quarter of the peak: it is usually an activation that grows with batch x seq^2 "
        "(attention scores) and the first thing to attack."
    ),
    fix=(
        "Use F.scaled_dot_product_attention for attention scores; otherwise activation checkpointing "
        "(torch.utils.checkpoint), a smaller batch (`training-profiler compare ... --memory` prints "
        "the largest that fits), bf16 autocast, or an optimizer with foreach=False / fused=True. When "
        "parameters, gradients and optimizer state alone exceed the budget, only shrinking them helps: "
        "shard them across devices (ZeRO, FSDP), an 8-bit or factored optimizer, or a smaller model."
    ),
    references=(
        f"{DOCS}/generated/torch.nn.functional.scaled_dot_product_attention.html",
        f"{DOCS}/checkpoint.html",
        f"{DOCS}/distributed.optim.html",
    ),
    bad=(
        "class Attention(nn.Module):\n"
        "    def __init__(self, d=64):\n"
        "        super().__init__()\n"
        "        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)\n"
        "    def forward(self, x):\n"
        "        q, k, v = self.qkv(x).chunk(3, dim=-1)\n"
        "        scores = (q @ k.transpose(-2, -1)).softmax(dim=-1)\n"
        "        return self.out(scores @ v)\n"
        "model = Attention()\n"
        "inputs = [(1, 4096, 64)]  # one 4096x4096 fp32 score tensor: 64 MiB\n",
    ),
    good=(
        "class Attention(nn.Module):\n"
        "    def __init__(self, d=64):\n"
        "        super().__init__()\n"
        "        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)\n"
        "    def forward(self, x):  # (batch, seq, d) -> one head of (batch, 1, seq, d)\n"
        "        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)\n"
        "        return self.out(torch.nn.functional.scaled_dot_product_attention(q, k, v).squeeze(1))\n"
        "model = Attention()\n"
        "inputs = [(1, 4096, 64)]\n",
    ),
)


@register(FXA106)
def _check_memory(ctx: Context) -> Iterable[Finding]:
    memory = ctx.report.memory
    if memory is None or not memory.peak_bytes:
        return
    peak = memory.peak_bytes
    phase = memory.peak_phase + (f" at '{memory.peak_module}'" if memory.peak_module else "")
    tensors = sorted(memory.top_tensors, key=lambda t: -t.bytes)
    if tensors:
        candidates = [(t.description, t.bytes, t.shape, t.module) for t in tensors]
    else:  # no simulation details: the largest layer outputs
        candidates = [(f"output of {r.name}", r.output_bytes, r.output_shape or [], r.name)
                      for r in sorted(ctx.graph.layers, key=lambda r: -r.output_bytes)[:3]]
    top = ", ".join(f"{d} {list(s)} {human_bytes(b)}" for d, b, s, _ in candidates[:3]) or "unknown"
    budget = ctx.config.memory_budget
    quadratic = [c for c in candidates[:3] if len(c[2]) >= 2 and c[2][-1] == c[2][-2] and c[2][-1] >= 256]
    knob = ("attention scores grow with seq^2: use F.scaled_dot_product_attention or checkpoint the attention"
            if quadratic else "use activation checkpointing, a smaller batch or bf16 autocast")
    data = {"peak_bytes": peak, "phase": str(phase), "top_tensor_bytes": candidates[0][1] if candidates else 0}
    where = candidates[0][3] if candidates else None
    if where and ctx.model is not None:
        try:
            ctx.model.get_submodule(where)
        except AttributeError:
            where = None  # e.g. the model's class name for ops run by the root module
    if budget is not None and peak > budget:
        data["budget_bytes"] = budget
        state = sum(memory.breakdown.get(k, 0) for k in ("params", "grads", "optimizer_state"))
        if state > budget:  # no activation saving can help: the model state itself must shrink
            data["model_state_bytes"] = state
            knob = (f"parameters, gradients and optimizer state alone take {human_bytes(state)}, over the budget: "
                    "shard the optimizer state or the parameters (ZeRO, FSDP), use an 8-bit or factored optimizer "
                    "(AdamW8bit, Adafactor) or a smaller model")
        yield FXA106.finding(ctx.locate(where), data, problem=f"predicted peak exceeds the budget of {human_bytes(budget)}",
                             peak=human_bytes(peak), phase=phase, top=top, knob=knob)
        return
    activations = [t for t in tensors if t.category in ("activations", "temporaries")]
    largest = activations[0].bytes if activations else (candidates[0][1] if candidates and not tensors else 0)
    if largest >= ctx.config.dominant_tensor_min_bytes and largest >= ctx.config.dominant_tensor_share * peak:
        share = largest / peak
        data["share"] = round(share, 4)
        finding = FXA106.finding(ctx.locate(where), data,
                                 problem=f"one tensor holds {share:.0%} of the memory",
                                 peak=human_bytes(peak), phase=phase, top=top, knob=knob)
        yield replace(finding, severity=Severity.WARNING)
