"""AMP3xx: operations that are unsafe or inaccurate in low precision."""

from __future__ import annotations

import ast

from ...findings import Rule, Severity
from ..engine import Context, LintRule

AMP_DOCS = "https://pytorch.org/docs/stable/amp.html"

AMP301 = Rule(
    code="AMP301",
    name="binary-cross-entropy",
    severity=Severity.ERROR,
    message="{name} is unsafe in fp16 and raises under CUDA autocast: use binary_cross_entropy_with_logits / BCEWithLogitsLoss on the logits",
    why=(
        "binary_cross_entropy takes probabilities and computes log(p); in fp16 a sigmoid output "
        "rounds to exactly 0 or 1 and the log becomes -inf. torch.autocast refuses it on CUDA with "
        "a RuntimeError; the *_with_logits variant fuses sigmoid and log with the log-sum-exp trick."
    ),
    fix="Drop the sigmoid and call F.binary_cross_entropy_with_logits(logits, target) (or nn.BCEWithLogitsLoss()).",
    references=(
        "https://pytorch.org/docs/stable/amp.html#prefer-binary-cross-entropy-with-logits-over-binary-cross-entropy",
        "https://pytorch.org/docs/stable/generated/torch.nn.BCEWithLogitsLoss.html",
    ),
    bad=(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def loss_fn(logits, target):\n"
        "    return F.binary_cross_entropy(torch.sigmoid(logits), target)  # expect: AMP301\n",
        "from torch import nn\n"
        "\n"
        "criterion = nn.BCELoss()  # expect: AMP301\n",
        "import torch\n"
        "\n"
        "def loss_fn(p, y):\n"
        "    return torch.nn.functional.binary_cross_entropy(p, y, reduction='sum')  # expect: AMP301\n",
    ),
    good=(
        "import torch.nn.functional as F\n"
        "\n"
        "def loss_fn(logits, target):\n"
        "    return F.binary_cross_entropy_with_logits(logits, target)\n",
        "from torch import nn\n"
        "\n"
        "criterion = nn.BCEWithLogitsLoss()\n",
        "def binary_cross_entropy(p, y):  # a user function of the same name is not torch's\n"
        "    return -(y * p.log()).mean()\n"
        "\n"
        "loss = binary_cross_entropy(p, y)\n",
    ),
)

_BCE_FUNCTIONS = {
    "torch.nn.functional.binary_cross_entropy": "binary_cross_entropy_with_logits",
    "torch.binary_cross_entropy": None,
}
_BCE_MODULES = {"torch.nn.BCELoss", "torch.nn.modules.loss.BCELoss"}
_SIGMOIDS = {"torch.sigmoid", "torch.nn.functional.sigmoid", "torch.special.expit"}


def _is_sigmoid(ctx: Context, node: ast.AST) -> bool:
    """``torch.sigmoid(x)`` with exactly one positional argument."""
    return (
        isinstance(node, ast.Call)
        and ctx.call_name(node) in _SIGMOIDS
        and len(node.args) == 1
        and not node.keywords
        and not isinstance(node.args[0], ast.Starred)
    )


class BinaryCrossEntropy(LintRule):
    rules = (AMP301,)
    tokens = ("binary_cross_entropy", "BCELoss")
    autofix_examples = (
        (
            "import torch\nimport torch.nn.functional as F\nloss = F.binary_cross_entropy(torch.sigmoid(z), y, reduction='sum')\n",
            "import torch\nimport torch.nn.functional as F\nloss = F.binary_cross_entropy_with_logits(z, y, reduction='sum')\n",
        ),
        (
            "import torch\nfrom torch import nn\nloss = nn.BCELoss()(torch.sigmoid(z), y)\n",
            "import torch\nfrom torch import nn\nloss = nn.BCEWithLogitsLoss()(z, y)\n",
        ),
    )

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        name = ctx.call_name(node)
        if name in _BCE_FUNCTIONS:
            fixable = (
                _BCE_FUNCTIONS[name] is not None
                and isinstance(node.func, ast.Attribute)  # a bare imported name would need a new import
                and bool(node.args)
                and _is_sigmoid(ctx, node.args[0])
            )
            ctx.report(AMP301, node, fixable=fixable, name=name.rsplit(".", 1)[-1])
        elif name in _BCE_MODULES:
            parent = ctx.parent(node)
            fixable = (
                isinstance(parent, ast.Call)
                and parent.func is node
                and isinstance(node.func, ast.Attribute)
                and bool(parent.args)
                and _is_sigmoid(ctx, parent.args[0])
            )
            ctx.report(AMP301, node, fixable=fixable, name="nn.BCELoss")

    def fix_transformer(self, positions):
        return _bce_fix(positions)


def _bce_fix(positions):
    # libcst is imported only when fixing: importing it costs ~0.25 s on every flake8 run
    import libcst as cst

    from ..fixes import PositionalFix

    class _BceFix(PositionalFix):
        """``bce(torch.sigmoid(x), y, ...)`` -> ``bce_with_logits(x, y, ...)``;
        ``nn.BCELoss(...)(torch.sigmoid(x), y)`` -> ``nn.BCEWithLogitsLoss(...)(x, y)``."""

        @staticmethod
        def _unwrap_sigmoid(call: cst.Call) -> cst.Call:
            first = call.args[0]
            inner = first.value.args[0].value  # type: ignore[attr-defined]
            return call.with_changes(args=[first.with_changes(value=inner), *call.args[1:]])

        @staticmethod
        def _rename(func: cst.BaseExpression, old: str, new: str) -> cst.BaseExpression | None:
            if isinstance(func, cst.Attribute) and func.attr.value == old:
                return func.with_changes(attr=cst.Name(new))
            if isinstance(func, cst.Name) and func.value == old:
                return None  # a bare imported name: renaming would need a new import
            return None

        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
            if not self.targeted(original) or not updated.args:
                return updated
            func = updated.func
            if isinstance(func, cst.Call):  # nn.BCELoss(...)(sigmoid(x), y)
                renamed = self._rename(func.func, "BCELoss", "BCEWithLogitsLoss")
                if renamed is None:
                    return updated
                self.applied += 1
                return self._unwrap_sigmoid(updated).with_changes(func=func.with_changes(func=renamed))
            if not isinstance(updated.args[0].value, cst.Call):
                return updated  # the constructor of an inline BCELoss: handled on the outer call
            renamed = self._rename(func, "binary_cross_entropy", "binary_cross_entropy_with_logits")
            if renamed is None:
                return updated
            self.applied += 1
            return self._unwrap_sigmoid(updated).with_changes(func=renamed)

    return _BceFix(positions)
