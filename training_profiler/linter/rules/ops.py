"""AMP3xx: operations that are unsafe or inaccurate in low precision.

Layout: each code has one section (``grep -n AMP302`` lands on it) holding its :class:`Rule`
(metadata, bad and good examples), then the detector that decides and reports it, then the
helpers only that section uses. Precision evidence shared with AMP4xx is in ``_common.py``.
"""

from __future__ import annotations

import ast
import re

from ...findings import Rule, Severity
from ..engine import AutocastState, Context, LintRule, target_key
from ._common import DTYPE_PRESERVING, dtype_arg, evident_precision, spelled_name

AMP_DOCS = "https://pytorch.org/docs/stable/amp.html"


_BCE_WHY = (
    "binary_cross_entropy takes probabilities and computes log(p); in fp16 a sigmoid output "
    "rounds to exactly 0 or 1 and the log becomes -inf. torch.autocast refuses it on CUDA with "
    "a RuntimeError; the *_with_logits variant fuses sigmoid and log with the log-sum-exp trick."
)
_BCE_FIX = "Drop the sigmoid and call F.binary_cross_entropy_with_logits(logits, target) (or nn.BCEWithLogitsLoss())."
_BCE_REFS = (
    "https://pytorch.org/docs/stable/amp.html#prefer-binary-cross-entropy-with-logits-over-binary-cross-entropy",
    "https://pytorch.org/docs/stable/generated/torch.nn.BCEWithLogitsLoss.html",
)
_BCE_GOOD = (
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
)

AMP301 = Rule(
    code="AMP301",
    name="binary-cross-entropy",
    severity=Severity.ERROR,
    message="{name} is unsafe in fp16 and raises under CUDA autocast ({evidence}): use binary_cross_entropy_with_logits / BCEWithLogitsLoss on the logits",
    why=_BCE_WHY + " Reported as an error where the file uses autocast, GradScaler, .half() or bfloat16 "
    "(or the package is configured with amp = true); elsewhere AMP306 gives the same advice as info.",
    fix=_BCE_FIX,
    references=_BCE_REFS,
    bad=(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def loss_fn(model, x, target):\n"
        "    with torch.autocast('cuda'):\n"
        "        logits = model(x)\n"
        "    return F.binary_cross_entropy(torch.sigmoid(logits), target)  # expect: AMP301\n",
        "import torch\n"
        "from torch import nn\n"
        "\n"
        "criterion = nn.BCELoss()  # expect: AMP301\n"
        "model = torch.nn.Linear(16, 1).half()\n",
        "import torch\n"
        "\n"
        "def loss_fn(p, y):\n"
        "    return torch.nn.functional.binary_cross_entropy(p, y, reduction='sum')  # expect: AMP301\n"
        "\n"
        "def evaluate(model, x):  # evidence later in the file counts too\n"
        "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "        return model(x)\n",
    ),
    good=_BCE_GOOD,
)

AMP306 = Rule(
    code="AMP306",
    name="binary-cross-entropy-amp-readiness",
    severity=Severity.INFO,
    message="AMP readiness: {name} is fine in fp32 but raises under CUDA autocast and is unsafe in fp16: before enabling mixed precision, use binary_cross_entropy_with_logits / BCEWithLogitsLoss on the logits",
    why=_BCE_WHY + " This file never uses autocast, GradScaler, .half() or bfloat16 (AMP301 covers files "
    "that do, and packages configured with amp = true), so today it computes in fp32 and is correct.",
    fix=_BCE_FIX,
    references=_BCE_REFS,
    bad=(
        "import torch\n"
        "from torch import nn\n"
        "\n"
        "criterion = nn.BCELoss()  # expect: AMP306\n"
        "\n"
        "def d_loss(netD, real, label):  # a classic fp32 DCGAN discriminator step\n"
        "    return criterion(netD(real).view(-1), label)\n",
        "import torch.nn.functional as F\n"
        "\n"
        "def vae_loss(recon, x, mu, logvar):\n"
        "    bce = F.binary_cross_entropy(recon, x, reduction='sum')  # expect: AMP306\n"
        "    return bce - 0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()\n",
    ),
    good=_BCE_GOOD,
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
    rules = (AMP301, AMP306)
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
            ctx.report_tiered(AMP301, AMP306, node, fixable=fixable, name=name.rsplit(".", 1)[-1])
        elif name in _BCE_MODULES:
            parent = ctx.parent(node)
            fixable = (
                isinstance(parent, ast.Call)
                and parent.func is node
                and isinstance(node.func, ast.Attribute)
                and bool(parent.args)
                and _is_sigmoid(ctx, parent.args[0])
            )
            ctx.report_tiered(AMP301, AMP306, node, fixable=fixable, name="nn.BCELoss")

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


# ---------------------------------------------------------------------------------------------
# AMP302: reductions and softmax computed in low precision

AMP302 = Rule(
    code="AMP302",
    name="low-precision-reduction",
    severity=Severity.WARNING,
    message="{op}() without dtype= {where} runs in fp16/bf16 and loses range or precision: pass dtype=torch.float32",
    why=(
        "Softmax, log-softmax, sums, products, cumulative sums and norms need float32's range and "
        "precision: a float16 sum overflows to inf past 65504, and small probabilities underflow to 0. "
        "CUDA autocast runs these ops in float32 for you, but not on a tensor you cast to half/bf16 "
        "yourself, not inside autocast(enabled=False) (the op runs in the dtype it receives), and not "
        "under CPU autocast (only prod is promoted there)."
    ),
    fix="Pass dtype=torch.float32 (e.g. torch.softmax(x, dim=-1, dtype=torch.float32)) and cast the result back if needed.",
    references=(
        "https://pytorch.org/docs/stable/amp.html#cuda-ops-that-can-autocast-to-float32",
        "https://pytorch.org/docs/stable/amp.html#cpu-ops-that-can-autocast-to-float32",
        "https://pytorch.org/docs/stable/generated/torch.softmax.html",
    ),
    bad=(
        "import torch\n"
        "\n"
        "def attention(q, k):\n"
        "    scores = (q @ k.transpose(-2, -1)).half()\n"
        "    return scores.softmax(-1)  # expect: AMP302\n",
        "import torch\n"
        "\n"
        "def total(x):\n"
        "    h = x.to(torch.float16)\n"
        "    probs = torch.softmax(h, -1)  # expect: AMP302\n"
        "    return torch.sum(h, dim=0)  # expect: AMP302\n",
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def step(model, x):\n"
        "    with torch.autocast('cuda'):\n"
        "        logits = model(x)\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            return F.log_softmax(logits, dim=-1)  # expect: AMP302\n",
        "import torch\n"
        "\n"
        "def step(model, x):\n"
        "    with torch.autocast('cpu'):\n"
        "        h = model(x)\n"
        "        return h.cumsum(dim=1)  # expect: AMP302\n",
    ),
    good=(
        "import torch\n"
        "\n"
        "def attention(q, k):\n"
        "    scores = (q @ k.transpose(-2, -1)).half()\n"
        "    return scores.softmax(-1, dtype=torch.float32)\n",
        "import torch\n"
        "\n"
        "def step(model, x):\n"
        "    with torch.autocast('cuda'):  # CUDA autocast runs softmax and sum in float32\n"
        "        logits = model(x)\n"
        "        probs = torch.softmax(logits, -1)\n"
        "    return probs.sum(), x.sum()  # dtype unknown outside an autocast region: fine\n",
        "import torch\n"
        "\n"
        "def step(model, x):\n"
        "    with torch.autocast('cuda'):\n"
        "        logits = model(x)\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            logits = logits.float()\n"
        "            return torch.log_softmax(logits, dim=-1)\n",
    ),
)


class LowPrecisionReduction(LintRule):
    rules = (AMP302,)
    # it needs an explicit cast or an autocast region: files without these words cannot fire
    tokens = ("half", "float16", "autocast")

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        func = node.func
        attr = spelled_name(ctx, func)
        if attr not in _REDUCTION_ATTRS:
            return
        if any(kw.arg in ("dtype", None) for kw in node.keywords):  # dtype= given (or **kwargs)
            return
        name = ctx.call_name(node)
        if name is not None:
            op = _REDUCTION_FUNCTIONS.get(name)
            if op is None:
                return
            operand = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "input"), None)
        elif isinstance(func, ast.Attribute) and attr in _REDUCTION_METHODS and _looks_like_tensor_method(node, func):
            op, operand = attr, func.value
        else:
            return
        if operand is None or isinstance(operand, ast.Starred) or dtype_arg(ctx, node):
            return
        where = _low_precision_context(ctx, operand, op, node)
        if where:
            ctx.report(AMP302, node, op=op, where=where)


def _low_precision_context(ctx: Context, operand: ast.AST, op: str, site: ast.AST) -> str | None:
    """Why ``op(operand)`` would run in low precision here, or None when it runs in float32."""
    state = ctx.autocast
    if state is not None and state.active:
        if state.device != "cpu" or op == "prod":  # CUDA autocast (and CPU for prod) promote to float32
            return None
        if evident_precision(ctx, operand, False, site) in _NOT_LOW:
            return None
        return "under CPU autocast"
    if state is not None:  # autocast(enabled=False): the op runs in the dtype it receives
        found = evident_precision(ctx, operand, True, site)
        if found in _NOT_LOW or (found is None and not _from_outside(ctx, operand, state)):
            return None
        return "inside autocast(enabled=False)"
    found = evident_precision(ctx, operand, False, site)
    if found in ("float16", "bfloat16"):
        return f"on a tensor cast to {found}"
    return None


# function qualname -> op name shown in the message
_REDUCTION_FUNCTIONS = {
    "torch.softmax": "softmax",
    "torch.log_softmax": "log_softmax",
    "torch.special.softmax": "softmax",
    "torch.special.log_softmax": "log_softmax",
    "torch.nn.functional.softmax": "softmax",
    "torch.nn.functional.log_softmax": "log_softmax",
    "torch.nn.functional.softmin": "softmin",
    "torch.cumsum": "cumsum",
    "torch.cumprod": "cumprod",
    "torch.prod": "prod",
    "torch.sum": "sum",
    "torch.norm": "norm",
    "torch.linalg.norm": "norm",
    "torch.linalg.vector_norm": "vector_norm",
}
_REDUCTION_METHODS = {"softmax", "log_softmax", "cumsum", "cumprod", "prod", "sum", "norm"}
_REDUCTION_ATTRS = {name.rsplit(".", 1)[-1] for name in _REDUCTION_FUNCTIONS} | _REDUCTION_METHODS

_NOT_LOW = ("float32", "integer")


def _looks_like_tensor_method(call: ast.Call, func: ast.Attribute) -> bool:
    """``x.sum(-1)`` rather than ``self.norm(x)`` (a LayerNorm module) or ``cls.softmax(x)``."""
    receiver = func.value
    if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
        return False
    if func.attr == "norm" and call.args:  # Tensor.norm(p=2, dim=...): p is a number or a string
        return isinstance(call.args[0], ast.Constant)
    return True


def _from_outside(ctx: Context, operand: ast.AST, region: AutocastState) -> bool:
    """True when ``operand`` names a tensor that entered ``region`` from outside (a parameter, a
    value bound before it or under an enclosing autocast); False for values computed inside it."""
    base = operand
    while True:
        if isinstance(base, ast.Subscript) or (isinstance(base, ast.Attribute) and base.attr in ("T", "mT", "data")):
            base = base.value
        elif isinstance(base, ast.Call) and isinstance(base.func, ast.Attribute) and base.func.attr in DTYPE_PRESERVING:
            base = base.func.value
        else:
            break
    key = target_key(base)
    if key is None:
        return False  # an expression computed here, e.g. softmax(self.proj(x))
    binding = ctx.lookup(key)
    state = binding.autocast if binding is not None else None
    while state is not None:
        if state is region:
            return False
        state = state.outer
    return True


# ---------------------------------------------------------------------------------------------
# AMP303 / AMP305: custom autograd.Function without custom_fwd / custom_bwd

_CUSTOM_FN_WHY = (
    "A custom torch.autograd.Function runs forward under the caller's autocast state, but backward "
    "runs later, outside the autocast region: its ops see a mix of float16 and float32 tensors, "
    "which fails with dtype mismatches or computes gradients in another precision than forward, and "
    "a custom kernel in forward receives whatever dtypes autocast produced. "
    "@torch.amp.custom_bwd runs backward with forward's autocast state; "
    "@torch.amp.custom_fwd(device_type=..., cast_inputs=torch.float32) casts the inputs and runs "
    "forward with autocast disabled, for code that needs float32. Reported only where forward or "
    "backward calls ops that autocast casts and that do not type-promote (@, matmul, mm, bmm, linear, "
    "conv, einsum, scaled_dot_product_attention) or a compiled kernel (torch.ops.*), and backward "
    "does not adapt to the gradient's dtype itself: elementwise ops and collectives promote mixed "
    "dtypes and need no decorator."
)
_CUSTOM_FN_FIX = (
    "Decorate forward with @torch.amp.custom_fwd(device_type=\"cuda\") (add cast_inputs=torch.float32 if it "
    "needs float32) and backward with @torch.amp.custom_bwd(device_type=\"cuda\"), below @staticmethod."
)
_CUSTOM_FN_REFS = (
    "https://pytorch.org/docs/stable/notes/amp_examples.html#autocast-and-custom-autograd-functions",
    "https://pytorch.org/docs/stable/amp.html#torch.amp.custom_fwd",
)
_CUSTOM_FN_GOOD = (
    "import torch\n"
    "\n"
    "class Swish(torch.autograd.Function):  # elementwise: mixed dtypes promote, nothing to decorate\n"
    "    @staticmethod\n"
    "    def forward(ctx, x):\n"
    "        ctx.save_for_backward(x)\n"
    "        return x * torch.sigmoid(x)\n"
    "\n"
    "    @staticmethod\n"
    "    def backward(ctx, grad):\n"
    "        (x,) = ctx.saved_tensors\n"
    "        s = torch.sigmoid(x)\n"
    "        return grad * (s * (1 + x * (1 - s)))\n"
    "\n"
    "def step(x):\n"
    "    with torch.autocast('cuda'):\n"
    "        return Swish.apply(x)\n",
    "import torch\n"
    "\n"
    "class Square(torch.autograd.Function):\n"
    "    @staticmethod\n"
    "    @torch.amp.custom_fwd(device_type='cuda', cast_inputs=torch.float32)\n"
    "    def forward(ctx, x):\n"
    "        ctx.save_for_backward(x)\n"
    "        return x * x\n"
    "\n"
    "    @staticmethod\n"
    "    @torch.amp.custom_bwd(device_type='cuda')\n"
    "    def backward(ctx, grad):\n"
    "        (x,) = ctx.saved_tensors\n"
    "        return 2 * x * grad\n"
    "\n"
    "def step(x):\n"
    "    with torch.autocast('cuda'):\n"
    "        return Square.apply(x)\n",
    "from functools import partial\n"
    "\n"
    "import torch\n"
    "from torch.autograd import Function\n"
    "\n"
    "custom_fwd = partial(torch.amp.custom_fwd, device_type='cuda')\n"
    "custom_bwd = partial(torch.amp.custom_bwd, device_type='cuda')\n"
    "\n"
    "class Identity(Function):\n"
    "    @staticmethod\n"
    "    @custom_fwd\n"
    "    def forward(ctx, x):\n"
    "        return x.clone()\n"
    "\n"
    "    @staticmethod\n"
    "    @custom_bwd\n"
    "    def backward(ctx, grad):\n"
    "        return grad\n",
)

AMP303 = Rule(
    code="AMP303",
    name="autograd-function-without-amp-decorators",
    severity=Severity.WARNING,
    message="custom autograd.Function {name}: {missing} in a file (or a package, amp = true) that uses autocast: decorate with @torch.amp.custom_fwd / custom_bwd(device_type=...)",
    why=_CUSTOM_FN_WHY,
    fix=_CUSTOM_FN_FIX,
    references=_CUSTOM_FN_REFS,
    bad=(
        "import torch\n"
        "\n"
        "class Bilinear(torch.autograd.Function):  # expect: AMP303\n"
        "    @staticmethod\n"
        "    def forward(ctx, x, w):\n"
        "        ctx.save_for_backward(x, w)\n"
        "        return x @ w\n"
        "\n"
        "    @staticmethod\n"
        "    def backward(ctx, grad):\n"
        "        x, w = ctx.saved_tensors\n"
        "        return grad @ w.t(), x.t() @ grad\n"
        "\n"
        "def step(x, w):\n"
        "    with torch.autocast('cuda'):\n"
        "        return Bilinear.apply(x, w)\n",
        "import torch\n"
        "from torch import autocast\n"
        "from torch.amp import custom_fwd\n"
        "from torch.autograd import Function\n"
        "\n"
        "class Project(Function):  # expect: AMP303\n"
        "    @staticmethod\n"
        "    @custom_fwd(device_type='cuda')\n"
        "    def forward(ctx, x, w):\n"
        "        ctx.save_for_backward(w)\n"
        "        return torch.nn.functional.linear(x, w)\n"
        "\n"
        "    @staticmethod\n"
        "    def backward(ctx, grad):  # custom_bwd is missing\n"
        "        (w,) = ctx.saved_tensors\n"
        "        return torch.matmul(grad, w), None\n"
        "\n"
        "@autocast('cuda')\n"
        "def step(x, w):\n"
        "    return Project.apply(x, w)\n",
    ),
    good=_CUSTOM_FN_GOOD,
)

AMP305 = Rule(
    code="AMP305",
    name="autograd-function-without-amp-decorators-no-autocast",
    severity=Severity.INFO,
    message="custom autograd.Function {name}: {missing}: decorate with @torch.amp.custom_fwd / custom_bwd(device_type=...) before it runs under autocast",
    why=_CUSTOM_FN_WHY + " This file does not use autocast itself (AMP303 covers files that do, and packages configured "
    "with amp = true), but the Function may still be called from an autocast region elsewhere.",
    fix=_CUSTOM_FN_FIX,
    references=_CUSTOM_FN_REFS,
    bad=(
        "import torch\n"
        "\n"
        "class Attention(torch.autograd.Function):  # expect: AMP305\n"
        "    @staticmethod\n"
        "    def forward(ctx, q, k):\n"
        "        ctx.save_for_backward(q, k)\n"
        "        return torch.bmm(q, k.transpose(1, 2))\n"
        "\n"
        "    @staticmethod\n"
        "    def backward(ctx, grad):\n"
        "        q, k = ctx.saved_tensors\n"
        "        return torch.bmm(grad, k), torch.bmm(grad.transpose(1, 2), q)\n",
        "import torch.autograd as ag\n"
        "import torch\n"
        "\n"
        "def make():\n"
        "    class Local(ag.Function):  # expect: AMP305\n"
        "        @staticmethod\n"
        "        def forward(ctx, x):\n"
        "            return torch.ops.mylib.fused_gelu(x)  # a compiled kernel sees autocast's dtypes\n"
        "\n"
        "        @staticmethod\n"
        "        def backward(ctx, grad):\n"
        "            return grad\n"
        "\n"
        "    return Local\n",
    ),
    good=_CUSTOM_FN_GOOD,
)


class CustomAutogradFunction(LintRule):
    rules = (AMP303, AMP305)
    tokens = ("autograd",)

    def visit_ClassDef(self, node: ast.ClassDef, ctx: Context) -> None:
        if not any(ctx.qualname(base) in _FUNCTION_BASES for base in node.bases):
            return
        missing = []
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name in ("forward", "backward"):
                which = "custom_fwd" if stmt.name == "forward" else "custom_bwd"
                if not any(_is_amp_decorator(ctx, deco, which) for deco in stmt.decorator_list):
                    missing.append(f"{stmt.name} lacks @{which}")
        if missing and _autocast_sensitive(ctx, node):
            # the severity depends on whether the file uses autocast anywhere: decide at the end
            scope = ctx.scope
            while scope.parent is not None:
                scope = scope.parent
            scope.data.setdefault(type(self).__name__, []).append((node, " and ".join(missing)))

    def leave_scope(self, node: ast.AST, ctx: Context) -> None:
        if not isinstance(node, ast.Module):
            return
        pending = ctx.scope.data.get(type(self).__name__, ())
        uses_autocast = "autocast" in ctx.facts or _AUTOCAST_CALL.search(ctx.source) is not None or ctx.amp_config
        for cls, missing in pending:
            ctx.report(AMP303 if uses_autocast else AMP305, cls, name=cls.name, missing=missing)


_FUNCTION_BASES = {"torch.autograd.Function", "torch.autograd.function.Function"}
_AMP_DECORATORS = {
    "custom_fwd": {"torch.amp.custom_fwd", "torch.amp.autocast_mode.custom_fwd", "torch.cuda.amp.custom_fwd", "torch.cuda.amp.autocast_mode.custom_fwd"},
    "custom_bwd": {"torch.amp.custom_bwd", "torch.amp.autocast_mode.custom_bwd", "torch.cuda.amp.custom_bwd", "torch.cuda.amp.autocast_mode.custom_bwd"},
}
_AUTOCAST_CALL = re.compile(r"\bautocast\s*\(")


def _is_amp_decorator(ctx: Context, deco: ast.AST, which: str) -> bool:
    target = deco.func if isinstance(deco, ast.Call) else deco
    name = ctx.qualname(target)
    if name is None:
        value = ctx.value_of(target)
        if isinstance(value, ast.Call) and ctx.call_name(value) == "functools.partial" and value.args:
            name = ctx.qualname(value.args[0])  # custom_fwd = partial(torch.amp.custom_fwd, device_type=...)
        else:
            # a relative import or a project helper we cannot resolve: trust its spelling, do not report
            return getattr(target, "attr", getattr(target, "id", None)) == which
    return name in _AMP_DECORATORS[which]


# ops autocast casts that do not type-promote: given a float16 and a float32 operand they raise
_NON_PROMOTING_AUTOCAST_OPS = {
    "matmul", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv", "addr", "mv", "einsum", "linear",
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "scaled_dot_product_attention", "chain_matmul", "multi_dot", "prelu",
}


def _autocast_sensitive(ctx: Context, cls: ast.ClassDef) -> bool:
    """Does forward or backward call an op whose dtypes autocast changes and which does not
    promote mixed dtypes (or a compiled kernel), without backward adapting to the gradient's dtype?"""
    sensitive = False
    for stmt in cls.body:
        if not isinstance(stmt, ast.FunctionDef) or stmt.name not in ("forward", "backward"):
            continue
        grads = {a.arg for a in stmt.args.args[1:]} if stmt.name == "backward" else set()
        for node in ast.walk(stmt):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                sensitive = True
            elif isinstance(node, ast.Call):
                name = ctx.call_name(node) or ""
                if spelled_name(ctx, node.func) in _NON_PROMOTING_AUTOCAST_OPS or name.startswith("torch.ops."):
                    sensitive = True
            elif (isinstance(node, ast.Attribute) and node.attr == "dtype" and isinstance(node.value, ast.Name)
                  and node.value.id in grads):
                return False  # backward casts to grad.dtype itself
    return sensitive


# ---------------------------------------------------------------------------------------------
# AMP304: numerically naive formulas

AMP304 = Rule(
    code="AMP304",
    name="naive-formula",
    severity=Severity.WARNING,
    message="{formula} overflows or loses precision (worst in fp16/bf16): use {better}",
    why=(
        "Composed from separate ops, these formulas round an intermediate result before the outer op "
        "sees it: softmax and sigmoid underflow to 0 so log gives -inf, exp overflows float16 past "
        "x = 11 so log(sum(exp(x))) gives inf, and 1 + x (or exp(x) next to 1) drops the digits of a "
        "small x. The fused functions compute the same value stably (log-sum-exp trick, log1p/expm1)."
    ),
    fix=(
        "torch.log(torch.softmax(x, d)) -> torch.log_softmax(x, d); torch.log(torch.sigmoid(x)) -> "
        "F.logsigmoid(x); torch.log(torch.sum(torch.exp(x), d)) -> torch.logsumexp(x, d); "
        "torch.log(1 + x) -> torch.log1p(x) (and log(1 + exp(x)) -> F.softplus(x)); torch.exp(x) - 1 -> torch.expm1(x)."
    ),
    references=(
        "https://pytorch.org/docs/stable/generated/torch.nn.functional.log_softmax.html",
        "https://pytorch.org/docs/stable/generated/torch.logsumexp.html",
        "https://pytorch.org/docs/stable/generated/torch.log1p.html",
        "https://pytorch.org/docs/stable/generated/torch.expm1.html",
    ),
    bad=(
        "import torch\n"
        "\n"
        "def nll(logits, target):\n"
        "    logp = torch.log(torch.softmax(logits, dim=1))  # expect: AMP304\n"
        "    return -logp.gather(1, target[:, None]).mean()\n",
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def log_partition(scores):\n"
        "    return torch.log(torch.sum(torch.exp(scores), dim=-1))  # expect: AMP304\n"
        "\n"
        "def log_prob(z):\n"
        "    return F.sigmoid(z).log()  # expect: AMP304\n",
        "import torch\n"
        "\n"
        "def softplus_and_elu(x):\n"
        "    a = torch.log(1 + x.exp())  # expect: AMP304\n"
        "    b = torch.exp(x) - 1  # expect: AMP304\n"
        "    return a, b\n",
    ),
    good=(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def losses(logits, scores, z, x):\n"
        "    return (torch.log_softmax(logits, dim=1), torch.logsumexp(scores, dim=-1),\n"
        "            F.logsigmoid(z), torch.log1p(x), torch.expm1(x))\n",
        "import math\n"
        "\n"
        "def schedule(step):  # Python floats are float64: not a tensor formula\n"
        "    return math.log(1 + step), math.exp(step) - 1\n",
        "import torch\n"
        "\n"
        "def probs(x, p):\n"
        "    return torch.log(2 + x), torch.exp(x) - 2, torch.log(p + 0.5)\n",
    ),
)


class NaiveFormula(LintRule):
    rules = (AMP304,)
    tokens = ("log(", "exp(")
    autofix_examples = (
        (
            "import torch\ny = torch.log(torch.softmax(x, dim=1))\nz = x.softmax(-1).log()\n",
            "import torch\ny = torch.log_softmax(x, dim=1)\nz = x.log_softmax(-1)\n",
        ),
        (
            "import torch\nimport torch.nn.functional as F\ny = torch.log(torch.sigmoid(x))\nz = x.sigmoid().log()\n",
            "import torch\nimport torch.nn.functional as F\ny = F.logsigmoid(x)\nz = F.logsigmoid(x)\n",
        ),
        (
            "import torch\na = torch.log(torch.sum(torch.exp(x), dim=-1))\nb = x.exp().sum(1, keepdim=True).log()\n",
            "import torch\na = torch.logsumexp(x, dim=-1)\nb = x.logsumexp(1, keepdim=True)\n",
        ),
        (
            "import torch\na = torch.log(1 + x)\nb = (p * q + 1.0).log()\nc = (torch.exp(x) - 1) * 2\nd = x.exp() - 1\n",
            "import torch\na = torch.log1p(x)\nb = (p * q).log1p()\nc = torch.expm1(x) * 2\nd = x.expm1()\n",
        ),
    )

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        if spelled_name(ctx, node.func) != "log":
            return
        inner = _torch_unary(ctx, node, "log", {"torch.log"})
        if inner is None:
            return
        found = self._log_of(ctx, node, inner)
        if found:
            formula, better, fixable = found
            ctx.report(AMP304, node, fixable=fixable, formula=formula, better=better)

    def _log_of(self, ctx: Context, log_call: ast.Call, inner: ast.AST) -> tuple[str, str, bool] | None:
        if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Add) and (_is_one(inner.left) or _is_one(inner.right)):
            x = inner.right if _is_one(inner.left) else inner.left
            if _torch_unary(ctx, x, "exp", _EXPS) is not None:  # softplus: log1p(exp(x)) still overflows
                return "log(1 + exp(x))", "F.softplus(x)", False
            return "log(1 + x)", "torch.log1p(x)", isinstance(log_call.func, ast.Attribute)
        if not isinstance(inner, ast.Call) or not isinstance(inner.func, (ast.Attribute, ast.Name)):
            return None
        ifunc = inner.func
        spelled = spelled_name(ctx, ifunc)
        if spelled == "softmax":
            name = ctx.call_name(inner)
            if name in _SOFTMAXES or (name is None and isinstance(ifunc, ast.Attribute) and _not_self(ifunc.value)):
                return "log(softmax(x))", "log_softmax(x)", isinstance(ifunc, ast.Attribute)
        elif spelled in ("sigmoid", "expit"):
            if _torch_unary(ctx, inner, spelled, _SIGMOIDS) is not None:
                return "log(sigmoid(x))", "F.logsigmoid(x)", self._functional_reachable(ctx, log_call)
        elif spelled == "sum":
            return self._log_sum_exp(ctx, inner)
        return None

    def _log_sum_exp(self, ctx: Context, call: ast.Call) -> tuple[str, str, bool] | None:
        name = ctx.call_name(call)
        func = call.func
        if name == "torch.sum" and call.args:  # torch.sum(torch.exp(x), dim)
            exp, dims = call.args[0], call.args[1:]
            spelled_by = func  # torch.sum -> torch.logsumexp
        elif name is None and isinstance(func, ast.Attribute):  # torch.exp(x).sum(dim)
            exp, dims = func.value, call.args
            spelled_by = exp.func if isinstance(exp, ast.Call) else None
        else:
            return None
        if _torch_unary(ctx, exp, "exp", _EXPS) is None:
            return None
        has_dim = bool(dims) or any(kw.arg == "dim" for kw in call.keywords)
        fixable = (
            has_dim
            and all(kw.arg in _SUM_KEYWORDS for kw in call.keywords)
            and not any(isinstance(a, ast.Starred) for a in call.args)
            and isinstance(spelled_by, ast.Attribute)  # a bare imported name would need a new import
        )
        return "log(sum(exp(x)))", "torch.logsumexp(x, dim)", fixable

    @staticmethod
    def _functional_reachable(ctx: Context, node: ast.AST) -> bool:
        """True when the module imports a spelling of torch.nn.functional that is still visible here."""
        module = node
        while ctx.parent(module) is not None:
            module = ctx.parent(module)
        if not isinstance(module, ast.Module):
            return False
        prefix = _functional_prefix(_import_triples(module.body))
        return prefix is not None and ctx.qualname(ast.parse(prefix, mode="eval").body) == "torch.nn.functional"

    def visit_BinOp(self, node: ast.BinOp, ctx: Context) -> None:
        if not isinstance(node.op, ast.Sub) or not _is_one(node.right):
            return
        if _torch_unary(ctx, node.left, "exp", _EXPS) is not None:
            fixable = isinstance(node.left.func, ast.Attribute)  # type: ignore[attr-defined]
            ctx.report(AMP304, node, fixable=fixable, formula="exp(x) - 1", better="torch.expm1(x)")

    def fix_transformer(self, positions):
        return _naive_formula_fix(positions)


_SOFTMAXES = {"torch.softmax", "torch.nn.functional.softmax", "torch.special.softmax"}
_EXPS = {"torch.exp"}
_SUM_KEYWORDS = {"dim", "keepdim"}  # torch.logsumexp(input, dim, keepdim=False)


def _not_self(node: ast.AST) -> bool:
    return not (isinstance(node, ast.Name) and node.id in ("self", "cls"))


def _torch_unary(ctx: Context, node: ast.AST, spelled: str, functions: set[str]) -> ast.AST | None:
    """x for ``torch.f(x)`` (qualname in ``functions``) or the tensor method ``x.f()``."""
    if not isinstance(node, ast.Call) or node.keywords:
        return None
    func = node.func
    if spelled_name(ctx, func) != spelled:
        return None
    name = ctx.call_name(node)
    if name is not None:
        if name in functions and len(node.args) == 1 and not isinstance(node.args[0], ast.Starred):
            return node.args[0]
        return None
    if isinstance(func, ast.Attribute) and not node.args and _not_self(func.value):
        return func.value
    return None


def _is_one(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value == 1


def _import_triples(body) -> list[tuple[str | None, str, str | None]]:
    """(from-module or None, imported name, alias) for the top-level imports of a module."""
    triples = []
    for stmt in body:
        if isinstance(stmt, ast.Import):
            triples += [(None, a.name, a.asname) for a in stmt.names]
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            triples += [(stmt.module, a.name, a.asname) for a in stmt.names]
    return triples


def _functional_prefix(imports) -> str | None:
    """How the module spells torch.nn.functional: its alias (``F``), else ``torch.nn.functional``."""
    torch_name = None
    for module, name, alias in imports:
        if module is None and name == "torch.nn.functional" and alias:
            return alias
        if module == "torch.nn" and name == "functional":
            return alias or name
        if module is None and torch_name is None and (name == "torch" or (name.startswith("torch.") and not alias)):
            torch_name = alias or "torch"
    return f"{torch_name}.nn.functional" if torch_name else None


def _naive_formula_fix(positions):
    """The AMP304 rewrites; the detector marks a finding fixable only for the shapes handled here."""
    # libcst is imported only when fixing: importing it costs ~0.25 s on every flake8 run
    import libcst as cst
    from libcst.helpers import get_full_name_for_node

    from ..fixes import PositionalFix

    def _cst_import_triples(module: cst.Module) -> list[tuple[str | None, str, str | None]]:
        triples = []
        for stmt in module.body:
            if not isinstance(stmt, cst.SimpleStatementLine):
                continue
            for small in stmt.body:
                if isinstance(small, cst.Import):
                    for a in small.names:
                        triples.append((None, get_full_name_for_node(a.name), a.evaluated_alias))
                elif isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative:
                    if isinstance(small.names, cst.ImportStar):
                        continue
                    module_name = get_full_name_for_node(small.module)
                    for a in small.names:
                        triples.append((module_name, get_full_name_for_node(a.name), a.evaluated_alias))
        return triples

    def _cst_unary(node: cst.BaseExpression, name: str) -> tuple[cst.BaseExpression, cst.Attribute | None] | None:
        """(x, func) for ``T.name(x)``; (x, None) for the method ``x.name()``; None otherwise."""
        if not isinstance(node, cst.Call) or not isinstance(node.func, cst.Attribute) or node.func.attr.value != name:
            return None
        if len(node.args) == 1 and node.args[0].keyword is None and not node.args[0].star:
            return node.args[0].value, node.func
        if not node.args:
            return node.func.value, None
        return None

    def _cst_is_one(node: cst.BaseExpression) -> bool:
        return isinstance(node, (cst.Integer, cst.Float)) and ast.literal_eval(node.value) == 1

    def _as_receiver(node: cst.BaseExpression) -> cst.BaseExpression:
        """``node`` usable before ``.method()``: parenthesized unless it is an atom."""
        if isinstance(node, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) or node.lpar:
            return node
        return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])

    def _as_argument(node: cst.BaseExpression) -> cst.BaseExpression:
        """A former receiver ``(-x)`` as a call argument: ``-x`` (a tuple or generator keeps its parens)."""
        if isinstance(node, (cst.Tuple, cst.GeneratorExp, cst.Yield)):
            return node
        return node.with_changes(lpar=[], rpar=[])

    class _NaiveFormulaFix(PositionalFix):
        """log(softmax) -> log_softmax, log(sigmoid) -> logsigmoid, log(sum(exp)) -> logsumexp,
        log(1 + x) -> log1p, exp(x) - 1 -> expm1, at the reported positions."""

        functional: str | None = None

        def visit_Module(self, node: cst.Module) -> bool:
            self.functional = _functional_prefix(_cst_import_triples(node))
            return True

        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
            if not self.targeted(original):
                return updated
            parts = _cst_unary(updated, "log")
            new = self._rewrite_log(updated, *parts) if parts else None
            if new is None:
                return updated
            self.applied += 1
            return new.with_changes(lpar=updated.lpar, rpar=updated.rpar)

        def _rewrite_log(self, log_call: cst.Call, inner: cst.BaseExpression, log_func: cst.Attribute | None):
            if isinstance(inner, cst.BinaryOperation) and isinstance(inner.operator, cst.Add):
                x = inner.right if _cst_is_one(inner.left) else inner.left if _cst_is_one(inner.right) else None
                if x is None:
                    return None
                if log_func is not None:  # torch.log(1 + x) -> torch.log1p(x)
                    return log_call.with_changes(func=log_func.with_changes(attr=cst.Name("log1p")),
                                                 args=[log_call.args[0].with_changes(value=x)])
                return cst.Call(func=cst.Attribute(value=_as_receiver(x), attr=cst.Name("log1p")))  # (1 + x).log()
            if not isinstance(inner, cst.Call) or not isinstance(inner.func, cst.Attribute):
                return None
            attr = inner.func.attr.value
            if attr == "softmax":
                return inner.with_changes(func=inner.func.with_changes(attr=cst.Name("log_softmax")))
            if attr in ("sigmoid", "expit"):
                parts = _cst_unary(inner, attr)
                if parts is None or self.functional is None:
                    return None
                return cst.Call(func=cst.parse_expression(f"{self.functional}.logsigmoid"), args=[cst.Arg(_as_argument(parts[0]))])
            if attr == "sum":
                return self._logsumexp(inner)
            return None

        @staticmethod
        def _logsumexp(call: cst.Call) -> cst.Call | None:
            method_exp = _cst_unary(call.func.value, "exp")  # type: ignore[attr-defined]
            if method_exp is not None:  # exp(x).sum(dims): dims are all of call.args
                x, exp_func = method_exp
                if exp_func is None:
                    return cst.Call(func=cst.Attribute(value=_as_receiver(x), attr=cst.Name("logsumexp")), args=call.args)
                comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")) if call.args else cst.MaybeSentinel.DEFAULT
                return cst.Call(func=exp_func.with_changes(attr=cst.Name("logsumexp")),
                                args=[cst.Arg(_as_argument(x), comma=comma), *call.args])
            if call.args and (function_exp := _cst_unary(call.args[0].value, "exp")) is not None:
                return call.with_changes(func=call.func.with_changes(attr=cst.Name("logsumexp")),  # type: ignore[attr-defined]
                                         args=[call.args[0].with_changes(value=_as_argument(function_exp[0])), *call.args[1:]])
            return None

        def leave_BinaryOperation(self, original: cst.BinaryOperation, updated: cst.BinaryOperation) -> cst.BaseExpression:
            if not self.targeted(original) or not isinstance(updated.operator, cst.Subtract) or not _cst_is_one(updated.right):
                return updated
            if _cst_unary(updated.left, "exp") is None:
                return updated
            self.applied += 1
            left: cst.Call = updated.left  # type: ignore[assignment]
            return left.with_changes(func=left.func.with_changes(attr=cst.Name("expm1")))  # type: ignore[attr-defined]

    return _NaiveFormulaFix(positions)
