"""FXA105 init-mismatch: weight scale against the initialisation the next activation needs.
Reads the model's real weights; torch is imported inside the checker."""

from __future__ import annotations

import math
from typing import Iterable

from ...findings import Finding, Rule, Severity
from .base import DOCS, Context, access_path, op_name, register

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
    references=(f"{DOCS}/nn.init.html", "https://arxiv.org/abs/1502.01852"),
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


_RELU_FAMILY = {"relu", "relu6", "leakyrelu", "rrelu", "prelu"}
_XAVIER = {"tanh": 5.0 / 3.0, "sigmoid": 1.0}


@register(FXA105)
def _check_init(ctx: Context) -> Iterable[Finding]:
    if ctx.model is None:
        return
    g = ctx.graph
    pairs = []  # (record, activation op, activation record)
    recurrent = []
    for rec in g.layers:
        op = op_name(rec)
        if rec.kind == "module" and op in ("lstm", "gru", "rnn"):
            recurrent.append(rec)
            continue
        if rec.kind != "module" or not (op == "linear" or op.startswith("conv")) or rec.params == 0:
            continue
        consumers = g.consumers[rec.node]
        if len(consumers) != 1:
            continue
        act = g.by_node[consumers[0]]
        act_op = op_name(act).replace("_", "")  # "leaky_relu" and "LeakyReLU" -> "leakyrelu"
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
            path = access_path(rec.name)
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
            gates = {"lstm": 4, "gru": 3, "rnn": 1}[op_name(rec)]
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
                path = f"{access_path(rec.name)}.{name}"
                yield FXA105.finding(ctx.locate(rec.name, rec.node),
                                     {"parameter": name, "norm_deviation": round(worst, 3)},
                                     module=f"{rec.name}.{name}", actual=f"{float(weight.std()):.3g}",
                                     ratio=f"{float(weight.std()) * math.sqrt(hidden):.2f}", scheme="orthogonal",
                                     activation="recurrence", expected=f"{1 / math.sqrt(hidden):.3g}",
                                     call=f"for w in {path}.chunk({gates}): nn.init.orthogonal_(w)")
