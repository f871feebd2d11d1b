"""What breaks the training step itself: FXA108 unused-parameters (no gradient) and FXA109
double-softmax (probabilities fed to a loss that expects logits)."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from ...findings import Finding, Rule, Severity
from .base import DOCS, Context, op_name, register

FXA108 = Rule(
    code="FXA108",
    name="unused-parameters",
    severity=Severity.WARNING,
    message="{count} trainable parameter tensor(s) ({params} params) never used in the forward graph, e.g. '{example}': remove them or freeze them",
    why=(
        "Parameters that take no part in the forward pass get no gradient. Under "
        "DistributedDataParallel the reducer waits for their gradients forever (the 'Expected to "
        "have finished reduction' error) unless find_unused_parameters=True, which costs an extra "
        "graph traversal every step. They still cost their parameter memory, and a checkpoint "
        "that saves them carries dead weights (torch.optim gives them no state: it skips "
        "parameters whose .grad is None)."
    ),
    fix="Delete the unused submodule, or call requires_grad_(False) on it if it is used only in some modes.",
    references=(f"{DOCS}/generated/torch.nn.parallel.DistributedDataParallel.html",),
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


@register(FXA108)
def _check_unused_params(ctx: Context) -> Iterable[Finding]:
    # the engine's verdict from the gradients, the same on every capture path (export graphs are
    # aten-level: no module or get_attr record there says which parameter a node reads)
    unused = ctx.report.params_without_grad
    if unused is None and ctx.report.totals.trainable_params:
        ctx.report.capture.notes.append(
            "FXA108 (unused parameters) not checked: no backward ran (no floating output needs a gradient)")
    if not unused:
        return
    total = sum(unused.values())
    example = next(iter(unused))
    owner = example.rsplit(".", 1)[0] if "." in example else ""
    yield FXA108.finding(ctx.locate(owner), {"count": len(unused), "params": total, "names": list(unused)[:20]},
                         count=len(unused), params=f"{total:,}", example=example)


_CE = {"cross_entropy", "crossentropyloss"}
_NLL = {"nll_loss", "nllloss", "nll_loss_forward", "nll_loss2d", "nll_loss2d_forward"}
_SOFTMAX = {"softmax"}
_LOG_SOFTMAX = {"log_softmax", "logsoftmax"}


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
    references=(f"{DOCS}/generated/torch.nn.CrossEntropyLoss.html", f"{DOCS}/generated/torch.nn.NLLLoss.html"),
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


@register(FXA109)
def _check_double_softmax(ctx: Context) -> Iterable[Finding]:
    g = ctx.graph
    for rec in g.layers:
        op = op_name(rec)
        if op not in _CE and op not in _NLL:
            continue
        producer, _ = g.source_through_reshapes(rec)
        if producer is None:
            continue
        act = op_name(producer)
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
