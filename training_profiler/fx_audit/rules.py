"""Architecture rules FXA101-FXA109 over the engine's records.

Each rule is its metadata (a :class:`~training_profiler.findings.Rule`, with ``bad``/``good``
example models that the generic test audits) next to its checker. Checkers read only the
torch-free :class:`LayerRecord` list and totals; FXA105 also reads the real module weights, and
FXA108 the model's parameter names. This module imports without torch (the rules reference is
generated from it); torch is imported inside the checkers that need it.

Graph vocabulary used by the checkers:

* a *weight layer* is a Linear / Conv / Embedding / RNN module call (or a functional ``linear``,
  ``conv*``, ``matmul`` fed by a parameter); normalisation layers are not weight layers;
* an *edge* is an entry of ``LayerRecord.inputs`` whose producer outputs a floating tensor
  (integer masks and ``size()`` results carry no gradient);
* the *gradient depth* of a weight layer is the fewest weight layers on any path from it to an
  output (itself included): residual adds and concatenations create short paths.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable

from ..findings import Finding, Location, Rule, Severity
from ..units import human_bytes
from ..units import parse_bytes
from .records import AuditReport, LayerRecord

__all__ = ["AuditConfig", "all_rules", "rule", "check_report"]

_DOCS = "https://pytorch.org/docs/stable"

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
        f"{_DOCS}/generated/torch.nn.AdaptiveAvgPool2d.html",
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
    references=(f"{_DOCS}/generated/torch.nn.Conv2d.html", "https://arxiv.org/abs/1409.1556"),
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
    references=(f"{_DOCS}/nn.html#normalization-layers", "https://arxiv.org/abs/1502.03167"),
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

FXA105 = Rule(
    code="FXA105",
    name="init-mismatch",
    severity=Severity.WARNING,
    message="'{module}' weight std {actual} is {ratio}x the {scheme} init for the {activation} after it ({expected}): {call}",
    why=(
        "Each activation keeps the signal's variance only under its matching initialisation: "
        "He/Kaiming for the ReLU family, Xavier/Glorot for tanh and sigmoid, orthogonal for "
        "recurrent weights. PyTorch's default Linear/Conv init (kaiming_uniform_ with a=sqrt(5)) "
        "has std 1/sqrt(3*fan_in), 0.41x the He value, so deep ReLU stacks shrink the signal at "
        "every layer. Layers followed by a normalization layer are not checked (it rescales). "
        "Needs real weights: on meta/fake models the check is skipped with a note in the report."
    ),
    fix="Initialise the weight with the nn.init call given in the message (e.g. in the model's __init__).",
    references=(f"{_DOCS}/nn.init.html", "https://arxiv.org/abs/1502.01852"),
    bad=(
        "model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))\n"
        "torch.manual_seed(0)\n"
        "for layer in (model[0], model[2]):\n"
        "    nn.init.normal_(layer.weight, std=0.01); nn.init.zeros_(layer.bias)\n"
        "inputs = [torch.randn(4, 64)]\n",
        "model = nn.Sequential(nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))\n"
        "torch.manual_seed(0)\n"
        "for layer in (model[0], model[2]):\n"
        "    nn.init.normal_(layer.weight, std=0.5); nn.init.zeros_(layer.bias)  # saturates the tanh\n"
        "inputs = [torch.randn(4, 128)]\n",
    ),
    good=(
        "model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))\n"
        "torch.manual_seed(0)\n"
        "nn.init.kaiming_normal_(model[0].weight, nonlinearity='relu'); nn.init.zeros_(model[0].bias)\n"
        "nn.init.normal_(model[2].weight, std=0.01); nn.init.zeros_(model[2].bias)\n"
        "inputs = [torch.randn(4, 64)]\n",
        "model = nn.Sequential(nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))\n"
        "torch.manual_seed(0)\n"
        "nn.init.xavier_normal_(model[0].weight, gain=nn.init.calculate_gain('tanh')); nn.init.zeros_(model[0].bias)\n"
        "nn.init.normal_(model[2].weight, std=0.01); nn.init.zeros_(model[2].bias)\n"
        "inputs = [torch.randn(4, 128)]\n",
    ),
)

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
        "the largest that fits), bf16 autocast, or an optimizer with foreach=False / fused=True."
    ),
    references=(
        f"{_DOCS}/generated/torch.nn.functional.scaled_dot_product_attention.html",
        f"{_DOCS}/checkpoint.html",
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
        f"{_DOCS}/generated/torch.nn.BatchNorm2d.html",
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

FXA108 = Rule(
    code="FXA108",
    name="unused-parameters",
    severity=Severity.WARNING,
    message="{count} trainable parameter tensor(s) ({params} params) never used in the forward graph, e.g. '{example}': remove them or freeze them",
    why=(
        "Parameters that take no part in the forward pass get no gradient. Under "
        "DistributedDataParallel the reducer waits for their gradients forever (the 'Expected to "
        "have finished reduction' error) unless find_unused_parameters=True, which costs an extra "
        "graph traversal every step; optimizers still allocate state for them."
    ),
    fix="Delete the unused submodule, or call requires_grad_(False) on it if it is used only in some modes.",
    references=(f"{_DOCS}/generated/torch.nn.parallel.DistributedDataParallel.html",),
    bad=(
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc, self.old_head = nn.Linear(16, 4), nn.Linear(16, 4)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
        "model = Net()\n"
        "inputs = [(2, 16)]\n",
    ),
    good=(
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc, self.head = nn.Linear(16, 4), nn.Linear(4, 4)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.fc(x))\n"
        "model = Net()\n"
        "inputs = [(2, 16)]\n",
    ),
)

FXA109 = Rule(
    code="FXA109",
    name="double-softmax",
    severity=Severity.ERROR,
    message="{loss} '{node}' receives the output of {act} '{producer}': {remedy}",
    why=(
        "CrossEntropyLoss applies log_softmax itself and NLLLoss expects log-probabilities. "
        "Feeding probabilities squashes the logits a second time: gradients shrink, training "
        "stalls and the reported loss is wrong. log_softmax before CrossEntropyLoss is only "
        "redundant (warning)."
    ),
    fix="Pass raw logits to CrossEntropyLoss (or log_softmax output to NLLLoss); apply softmax only for inference.",
    references=(f"{_DOCS}/generated/torch.nn.CrossEntropyLoss.html", f"{_DOCS}/generated/torch.nn.NLLLoss.html"),
    bad=(
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(16, 5)\n"
        "    def forward(self, x, target):\n"
        "        probs = torch.softmax(self.fc(x), dim=-1)\n"
        "        return nn.functional.cross_entropy(probs, target)\n"
        "model = Net()\n"
        "inputs = [torch.randn(4, 16), torch.tensor([0, 1, 2, 3])]\n",
    ),
    good=(
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(16, 5)\n"
        "    def forward(self, x, target):\n"
        "        return nn.functional.cross_entropy(self.fc(x), target)\n"
        "model = Net()\n"
        "inputs = [torch.randn(4, 16), torch.tensor([0, 1, 2, 3])]\n",
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(16, 5)\n"
        "    def forward(self, x, target):\n"
        "        return nn.functional.nll_loss(torch.log_softmax(self.fc(x), dim=-1), target)\n"
        "model = Net()\n"
        "inputs = [torch.randn(4, 16), torch.tensor([0, 1, 2, 3])]\n",
    ),
)

_RULES = (FXA101, FXA102, FXA103, FXA104, FXA105, FXA106, FXA107, FXA108, FXA109)


def all_rules() -> tuple[Rule, ...]:
    """Metadata of every audit rule, sorted by code (a provider for ``docs/rules.md``)."""
    return _RULES


def rule(code: str) -> Rule:
    for r in _RULES:
        if r.code == code:
            return r
    raise ValueError(f"unknown audit rule {code!r}: use one of {', '.join(r.code for r in _RULES)}")


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class AuditConfig:
    """Rule thresholds; ``[tool.training-profiler.audit]`` keys are these names with dashes."""

    linear_max_params: int = 1_000_000  # FXA101: Linears above this are candidates
    linear_max_share: float = 0.5  # FXA101: reported at this share of all params (or when fed by a flatten)
    max_kernel: int = 7  # FXA102
    max_plain_depth: int = 20  # FXA103
    max_unnormalized: int = 8  # FXA104: a chain this long without a norm is reported
    init_tolerance: float = 1.5  # FXA105: std ratio outside [1/t, t] is a mismatch
    memory_budget: int | None = None  # FXA106: bytes; error when the peak exceeds it
    dominant_tensor_share: float = 0.25  # FXA106: warning when one tensor holds this share of the peak
    dominant_tensor_min_bytes: int = 64 * 2**20  # FXA106: ... and is at least this large

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "AuditConfig":
        """Build from ``[tool.training-profiler.audit]`` (dashes or underscores; sub-tables ignored)."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, dict):
                continue  # e.g. the models.<name> tables
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(
                    f"unknown audit setting {key!r} in [tool.training-profiler.audit]: use one of "
                    f"{', '.join(k.replace('_', '-') for k in known)}"
                )
            if name == "memory_budget" and isinstance(value, str):
                value = parse_bytes(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"audit setting {key!r} must be a number, got {value!r}")
            kwargs[name] = value
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Graph helpers over LayerRecord.inputs


def _op(rec: LayerRecord) -> str:
    """Normalised op name: "Conv2d" -> "conv2d", "aten._softmax.default" -> "softmax"."""
    op = rec.op.lower()
    if op.startswith("aten."):
        op = op[5:]
    op = op.split(".")[0].strip("_")
    return op


_NORM_RE = re.compile(r"norm")
_WEIGHT_MODULES = re.compile(r"^(linear|lazylinear|bilinear|conv\w*|lazyconv\w*|embedding\w*|lstm|gru|rnn|multiheadattention)$")
_WEIGHT_FUNCTIONS = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d", "matmul", "mm", "bmm", "addmm", "einsum", "embedding", "convolution"}
_RESHAPES = {"flatten", "view", "reshape"}
_PASS_THROUGH = {"flatten", "view", "reshape", "dropout", "contiguous", "identity", "squeeze", "unsqueeze",
                 "dropout1d", "dropout2d", "to", "type", "float", "clone"}


def _is_norm(rec: LayerRecord) -> bool:
    return bool(_NORM_RE.search(_op(rec)) or _NORM_RE.search((rec.module_type or "").lower())) and rec.kind != "get_attr"


class _Graph:
    """Producers/consumers over gradient-carrying edges; ``layers`` in topological order (the
    engine appends parameter reads after the nodes, so the records' own order is not enough)."""

    def __init__(self, layers: list[LayerRecord]):
        self.by_node = {r.node: r for r in layers}
        self.producers: dict[str, list[str]] = {}
        self.consumers: dict[str, list[str]] = {r.node: [] for r in layers}
        for r in layers:
            prods = [i for i in dict.fromkeys(r.inputs) if i in self.by_node and _carries_grad(self.by_node[i])]
            self.producers[r.node] = prods
            for p in prods:
                self.consumers[p].append(r.node)
        self.layers = self._topological(layers)

    def _topological(self, layers: list[LayerRecord]) -> list[LayerRecord]:
        waiting = {r.node: len(self.producers[r.node]) for r in layers}
        ready = [r.node for r in reversed(layers) if not waiting[r.node]]  # a stack, first record on top
        order = []
        while ready:
            node = ready.pop()
            order.append(self.by_node[node])
            for c in reversed(self.consumers[node]):
                waiting[c] -= 1
                if not waiting[c]:
                    ready.append(c)
        if len(order) != len(layers):  # a cycle cannot come from an fx graph; keep the given order
            return list(layers)
        return order

    def is_weight_layer(self, rec: LayerRecord) -> bool:
        if rec.kind == "get_attr" or _is_norm(rec):
            return False
        op = _op(rec)
        if rec.kind == "module":
            return bool(_WEIGHT_MODULES.match(op)) or rec.params > 0
        if op in _WEIGHT_FUNCTIONS:
            return any(self.by_node[i].kind == "get_attr" for i in rec.inputs if i in self.by_node)
        return False

    def source_through_reshapes(self, rec: LayerRecord) -> tuple[LayerRecord | None, bool]:
        """The first producer of ``rec`` that is not a flatten/view/dropout-like op, and whether a
        flatten/view/reshape was crossed on the way."""
        seen, reshaped = set(), False
        current = rec
        while True:
            prods = self.producers.get(current.node, [])
            if not prods or current.node in seen:
                return None, reshaped
            seen.add(current.node)
            current = self.by_node[prods[0]]
            if _op(current) not in _PASS_THROUGH:
                return current, reshaped
            reshaped = reshaped or _op(current) in _RESHAPES


def _carries_grad(rec: LayerRecord) -> bool:
    if rec.output_shape is None:
        return False
    dtype = (rec.output_dtype or "float").lower()
    return dtype.startswith(("float", "bfloat", "complex", "torch.float", "torch.bfloat"))


# ---------------------------------------------------------------------------------------------
# Locations: the model's source file and the line where the module is defined


def _is_library_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("torch", "builtins", "transformers")


def _display_path(path: str) -> str:
    path = os.path.abspath(path)
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def _access_path(module: str) -> str:
    """"layers.3.fc" -> "model.layers[3].fc" (what a user types to reach the module)."""
    out = "model"
    for part in module.split(".") if module else []:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


class _Locator:
    """Maps a module path to (file, line) with ``inspect``: the nearest enclosing user-defined
    class, at the line where it assigns the child attribute (``self.features = ...``) when found,
    else its ``class`` line; the report's ``source`` (the factory) when no user class encloses it."""

    def __init__(self, model: Any, report: AuditReport):
        self.model = model
        file = report.source.get("file")
        library = file and f"{os.sep}site-packages{os.sep}torch{os.sep}" in file
        self.fallback = (None, None) if library else (file, report.source.get("line"))
        self.cache: dict[str, tuple[str | None, int | None]] = {}

    def __call__(self, module: str | None, node: str | None = None) -> Location:
        file, line = self._find(module or "")
        return Location(path=_display_path(file) if file else None, line=line, module=module or None, node=node)

    def _find(self, module: str) -> tuple[str | None, int | None]:
        if module in self.cache:
            return self.cache[module]
        result = self.fallback
        if self.model is not None:
            parts = module.split(".") if module else []
            for depth in range(len(parts), -1, -1):
                try:
                    owner = self.model.get_submodule(".".join(parts[:depth]))
                except (AttributeError, TypeError):
                    continue
                cls = type(owner)
                if _is_library_class(cls):
                    continue
                try:
                    file = inspect.getsourcefile(cls)
                    lines, start = inspect.getsourcelines(cls)
                except (OSError, TypeError):
                    continue
                line = start
                if depth < len(parts):
                    attr = re.compile(rf"\bself\.{re.escape(parts[depth])}\b")
                    for offset, text in enumerate(lines):
                        if attr.search(text) and ("=" in text):
                            line = start + offset
                            break
                result = (file, line)
                break
        self.cache[module] = result
        return result


# ---------------------------------------------------------------------------------------------
# Checkers: each takes a _Context and yields Findings


@dataclass
class _Context:
    report: AuditReport
    graph: _Graph
    config: AuditConfig
    model: Any
    locate: _Locator

    @property
    def total_params(self) -> int:
        return int(self.report.totals.get("params") or sum(r.params for r in self.report.layers))


def _check_oversized_linear(ctx: _Context) -> Iterable[Finding]:
    cfg = ctx.config
    total = max(ctx.total_params, 1)
    for rec in ctx.graph.layers:
        if _op(rec) not in ("linear", "lazylinear") or rec.params <= cfg.linear_max_params:
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


def _check_large_kernel(ctx: _Context) -> Iterable[Finding]:
    for rec in ctx.graph.layers:
        if rec.kind != "module" or not _op(rec).startswith("conv"):
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


def _check_plain_depth(ctx: _Context) -> Iterable[Finding]:
    g = ctx.graph
    depth: dict[str, int] = {}
    nxt: dict[str, str | None] = {}
    sinks = [r for r in g.layers if not g.consumers[r.node]]
    # an unused tuple element (`out, _ = self.lstm(x)`) is a dead end, not an output
    dead = {r.node for r in sinks if _op(r) == "getitem"} if any(_op(r) != "getitem" for r in sinks) else set()
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


def _check_missing_norm(ctx: _Context) -> Iterable[Finding]:
    g = ctx.graph
    run: dict[str, int] = {}
    prev: dict[str, str | None] = {}
    for rec in g.layers:
        if _is_norm(rec):
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


_RELU_FAMILY = {"relu", "relu6", "leakyrelu", "rrelu", "prelu"}
_XAVIER = {"tanh": 5.0 / 3.0, "sigmoid": 1.0}


def _check_init(ctx: _Context) -> Iterable[Finding]:
    if ctx.model is None:
        return
    g = ctx.graph
    pairs = []  # (record, activation op, activation record)
    recurrent = []
    for rec in g.layers:
        op = _op(rec)
        if rec.kind == "module" and op in ("lstm", "gru", "rnn"):
            recurrent.append(rec)
            continue
        if rec.kind != "module" or not (op == "linear" or op.startswith("conv")) or rec.params == 0:
            continue
        consumers = g.consumers[rec.node]
        if len(consumers) != 1:
            continue
        act = g.by_node[consumers[0]]
        act_op = _op(act).replace("_", "")  # "leaky_relu" and "LeakyReLU" -> "leakyrelu"
        if act_op in _RELU_FAMILY or act_op in _XAVIER:
            pairs.append((rec, act_op, act))
    if not pairs and not recurrent:
        return
    import torch

    def real(t) -> bool:
        from torch._subclasses.fake_tensor import FakeTensor

        return not t.is_meta and not isinstance(t, FakeTensor)

    modules = []
    for rec in [p[0] for p in pairs] + recurrent:
        try:
            modules.append(ctx.model.get_submodule(rec.name))
        except AttributeError:
            return
    if not all(real(p) for m in modules for p in m.parameters(recurse=False)):
        ctx.report.capture.notes.append(
            "FXA105 (initialisation) not checked: the model has no real weights (meta or fake tensors)")
        return
    tol = ctx.config.init_tolerance
    with torch.no_grad():
        for rec, act_op, act in pairs:
            weight = ctx.model.get_submodule(rec.name).weight.detach().float()
            actual = float(weight.std())
            if actual == 0.0:
                continue  # deliberate zero init
            receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
            fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
            path = _access_path(rec.name)
            if act_op in _RELU_FAMILY:
                slope = 0.01 if act_op == "leakyrelu" else 0.0
                if act.kind == "module" and act_op == "leakyrelu":
                    slope = getattr(ctx.model.get_submodule(act.name), "negative_slope", slope)
                gain = math.sqrt(2.0 / (1 + slope ** 2))
                expected, scheme = gain / math.sqrt(fan_in), "He/Kaiming"
                nl = "leaky_relu" if act_op == "leakyrelu" else "relu"
                call = f"nn.init.kaiming_normal_({path}.weight, nonlinearity='{nl}')"
            else:
                gain = _XAVIER[act_op]
                expected, scheme = gain * math.sqrt(2.0 / (fan_in + fan_out)), "Xavier/Glorot"
                call = f"nn.init.xavier_normal_({path}.weight, gain=nn.init.calculate_gain('{act_op}'))"
            ratio = actual / expected
            if 1 / tol <= ratio <= tol:
                continue
            yield FXA105.finding(ctx.locate(rec.name, rec.node),
                                 {"std": round(actual, 6), "expected_std": round(expected, 6), "ratio": round(ratio, 3),
                                  "activation": act_op, "fan_in": fan_in},
                                 module=rec.name, actual=f"{actual:.3g}", ratio=f"{ratio:.2f}", scheme=scheme,
                                 activation=act_op, expected=f"{expected:.3g}", call=call)
        gen = torch.Generator().manual_seed(0)
        for rec in recurrent:
            mod = ctx.model.get_submodule(rec.name)
            gates = {"lstm": 4, "gru": 3, "rnn": 1}[_op(rec)]
            for name, weight in mod.named_parameters():
                if not name.startswith("weight_hh"):
                    continue
                hidden = weight.shape[1]
                probes = torch.randn(hidden, 8, generator=gen)
                probes /= probes.norm(dim=0, keepdim=True)
                worst = 0.0
                for chunk in weight.detach().float().chunk(gates, dim=0):
                    gain = chunk @ probes  # orthogonal chunk: every probe keeps its unit norm
                    worst = max(worst, float((gain.norm(dim=0) - 1).abs().max()))
                if worst <= 0.2:
                    continue
                path = f"{_access_path(rec.name)}.{name}"
                yield FXA105.finding(ctx.locate(rec.name, rec.node),
                                     {"parameter": name, "norm_deviation": round(worst, 3)},
                                     module=f"{rec.name}.{name}", actual=f"{float(weight.std()):.3g}",
                                     ratio=f"{float(weight.std()) * math.sqrt(hidden):.2f}", scheme="orthogonal",
                                     activation="recurrence", expected=f"{1 / math.sqrt(hidden):.3g}",
                                     call=f"for w in {path}.chunk({gates}): nn.init.orthogonal_(w)")


def _check_memory(ctx: _Context) -> Iterable[Finding]:
    memory = ctx.report.memory
    peak = int(ctx.report.totals.get("peak_bytes") or (memory.peak_bytes if memory else 0))
    if not peak:
        return
    phase = ctx.report.totals.get("peak_phase") or (memory.peak_phase if memory else "?")
    if memory and memory.peak_module:
        phase = f"{phase} at '{memory.peak_module}'"
    tensors = sorted(memory.top_tensors, key=lambda t: -t.bytes) if memory else []
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


def _check_bias_before_bn(ctx: _Context) -> Iterable[Finding]:
    g = ctx.graph
    for rec in g.layers:
        op = _op(rec)
        if rec.kind != "module" or not (op == "linear" or op.startswith("conv")):
            continue
        consumers = g.consumers[rec.node]
        if len(consumers) != 1:
            continue
        bn = g.by_node[consumers[0]]
        if not _op(bn).startswith("batchnorm") and "batch_norm" not in _op(bn):
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


def _check_unused_params(ctx: _Context) -> Iterable[Finding]:
    if ctx.model is None:
        return
    used_modules = {r.name for r in ctx.graph.layers if r.kind == "module"}
    used_attrs = set()
    for r in ctx.graph.layers:
        if r.kind == "get_attr":
            used_attrs.add(r.name)
            used_attrs.add(str((r.extra or {}).get("target", "")))
    unused = []
    seen = set()
    for name, param in ctx.model.named_parameters():
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        parts = owner.split(".") if owner else []
        covered = any(".".join(parts[:i]) in used_modules for i in range(1, len(parts) + 1))
        if covered or name in used_attrs or name.replace(".", "_") in used_attrs:
            continue
        unused.append((name, param.numel()))
    if not unused:
        return
    total = sum(n for _, n in unused)
    example = unused[0][0]
    owner = example.rsplit(".", 1)[0] if "." in example else ""
    yield FXA108.finding(ctx.locate(owner), {"count": len(unused), "params": total,
                                             "names": [n for n, _ in unused[:20]]},
                         count=len(unused), params=f"{total:,}", example=example)


_CE = {"cross_entropy", "crossentropyloss"}
_NLL = {"nll_loss", "nllloss", "nll_loss_forward", "nll_loss2d", "nll_loss2d_forward"}
_SOFTMAX = {"softmax"}
_LOG_SOFTMAX = {"log_softmax", "logsoftmax"}


def _check_double_softmax(ctx: _Context) -> Iterable[Finding]:
    g = ctx.graph
    for rec in g.layers:
        op = _op(rec)
        if op not in _CE and op not in _NLL:
            continue
        producer, _ = g.source_through_reshapes(rec)
        if producer is None:
            continue
        act = _op(producer)
        if act in _SOFTMAX:
            remedy, severity = "pass the raw logits instead", Severity.ERROR
            if op in _NLL:
                remedy = "use log_softmax (NLLLoss expects log-probabilities) or CrossEntropyLoss on the logits"
        elif act in _LOG_SOFTMAX and op in _CE:
            remedy, severity = "log_softmax is redundant here, pass the raw logits", Severity.WARNING
        else:
            continue
        loss_name = "CrossEntropyLoss" if op in _CE else "NLLLoss"
        where = rec.name if rec.kind == "module" else rec.module  # a functional loss: its owning module
        finding = FXA109.finding(ctx.locate(where or None, rec.node),
                                 {"loss": op, "activation": act, "producer": producer.name},
                                 loss=loss_name, node=rec.name, act=act, producer=producer.name, remedy=remedy)
        yield replace(finding, severity=severity)


_CHECKERS = (
    _check_oversized_linear, _check_large_kernel, _check_plain_depth, _check_missing_norm, _check_init,
    _check_memory, _check_bias_before_bn, _check_unused_params, _check_double_softmax,
)


def check_report(report: AuditReport, model: Any = None, config: AuditConfig | None = None) -> list[Finding]:
    """Run every architecture rule on ``report`` (and ``model``, for FXA105/FXA108 and source
    locations); returns the findings sorted by severity, then code. Checks that could not run
    leave a line in ``report.capture.notes``."""
    if config is None:
        config = AuditConfig()
    if not isinstance(config, AuditConfig):
        raise TypeError(f"config must be an AuditConfig, got {type(config).__name__}: build one with AuditConfig(...)")
    ctx = _Context(report, _Graph(report.layers), config, model, _Locator(model, report))
    findings = [f for checker in _CHECKERS for f in checker(ctx)]
    return sorted(findings, key=lambda f: (-f.severity.rank, f.code, f.location.module or ""))
