"""AMP4xx: numeric constants that do not survive float16.

Layout: each code has one section (``grep -n AMP403`` lands on it) holding its :class:`Rule` and
its info-level readiness twin (metadata, bad and good examples) followed by the function that
decides and reports both; the detector that walks the file for that section comes after, then
the helpers only that section uses. Helpers shared by the sections come first.
"""

from __future__ import annotations

import ast
import math
import re

from ...findings import Rule, Severity
from ..engine import Binding, Context, LintRule, dtype_name, target_key
from ._common import evident_precision, spelled_name

FP16_MAX = 65504.0
FP16_SMALLEST_NORMAL = 2.0**-14  # 6.1035e-05; below it float16 keeps fewer digits, below 6e-8 none

_TIER_NOTE = (
    " Reported where the code can run in float16: the file uses fp16 autocast, GradScaler, .half() or "
    "torch.float16 (or the package is configured with amp = true); elsewhere the {twin} readiness "
    "advice says the same at info level. bfloat16 alone does not count: it has float32's range."
)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the sections: literal values


def _float_value(ctx: Context, node: ast.AST, follow_names: bool = True) -> float | None:
    """The value of a float literal, ``-literal``, ``float("...")``, or a name bound to one."""
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        if isinstance(node.op, ast.USub):
            sign = -sign
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) is float:
        return sign * node.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "float"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and ctx.lookup("float") is None  # the builtin, not a rebinding
    ):
        try:
            return sign * float(node.args[0].value)
        except ValueError:
            return None
    if follow_names and isinstance(node, (ast.Name, ast.Attribute)):
        value = ctx.value_of(node)
        if value is not None:
            found = _float_value(ctx, value, follow_names=False)
            return None if found is None else sign * found
    return None


def _not_fp16(ctx: Context, node: ast.AST, site: ast.AST) -> bool:
    """The code shows ``node`` is float32 (``x.float()``, ``dtype=torch.float32``) or an integer tensor."""
    return evident_precision(ctx, node, False, site) in ("float32", "integer")


def _is_number(ctx: Context, node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    return (isinstance(node, ast.Constant) and type(node.value) in (int, float)) or _float_value(ctx, node, False) is not None


def _shown(ctx: Context, node: ast.AST, value: float) -> str:
    """The constant as the user wrote it: ``-1e9``, or ``NEG_INF = -1e9`` for a name."""
    text = ast.get_source_segment(ctx.source, node) or f"{value:g}"
    if isinstance(node, (ast.Name, ast.Attribute)):
        bound = ctx.value_of(node)
        return f"{text} = {(ast.get_source_segment(ctx.source, bound) if bound else None) or format(value, 'g')}"
    return text


# ---------------------------------------------------------------------------------------------
# AMP401 fill-value-overflows-fp16 (readiness twin: AMP404)

_FILL_WHY = (
    "A fill value such as -1e9 works in float32 but not in float16, whose largest finite value is "
    "65504: masked_fill / fill_ / full on a float16 tensor raise 'value cannot be converted to "
    "type c10::Half without overflow', and torch.where turns it into -inf, so a fully masked "
    "softmax row becomes NaN. Under autocast the attention scores are float16 on CUDA."
)
_FILL_FIX = "Use torch.finfo(scores.dtype).min (or .max), which is the most negative value of whatever dtype the tensor has."
_FILL_REFS = (
    "https://pytorch.org/docs/stable/type_info.html#torch.torch.finfo",
    "https://pytorch.org/docs/stable/generated/torch.Tensor.masked_fill_.html",
)
_FILL_GOOD = (
    "import torch\n"
    "\n"
    "def attend(scores, mask):\n"
    "    with torch.autocast('cuda'):\n"
    "        return scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)\n",
    "import torch\n"
    "\n"
    "def attend(scores, mask, n):\n"
    "    causal = torch.full((n, n), float('-inf'))  # inf is representable in fp16\n"
    "    big = torch.full((n,), -1e9, dtype=torch.float32)  # explicitly float32\n"
    "    return scores.half().masked_fill(mask, -1e4) + causal, big\n",
    "def ids(tokens, mask):\n"
    "    return tokens.masked_fill(mask, 100000)  # integer fills are for integer tensors\n",
)

AMP401 = Rule(
    code="AMP401",
    name="fill-value-overflows-fp16",
    severity=Severity.ERROR,
    message="fill value {value} is outside the float16 range (|v| <= 65504) and this code runs in fp16 ({evidence}): there it raises or becomes inf; use torch.finfo(x.dtype).min",
    why=_FILL_WHY + _TIER_NOTE.format(twin="AMP404"),
    fix=_FILL_FIX,
    references=_FILL_REFS,
    bad=(
        "import torch\n"
        "\n"
        "def attend(q, k, mask):\n"
        "    with torch.autocast('cuda'):\n"
        "        scores = q @ k.transpose(-2, -1)\n"
        "        scores = scores.masked_fill(mask == 0, -1e9)  # expect: AMP401\n"
        "        return scores.softmax(-1)\n",
        "import torch\n"
        "\n"
        "NEG_INF = -1e10\n"
        "\n"
        "def bias(n, scores, keep):\n"
        "    causal = torch.full((n, n), float('-1e10'))  # expect: AMP401\n"
        "    return torch.where(keep, scores.half(), NEG_INF) + causal  # expect: AMP401\n",
        "def reset(model, buffer):\n"
        "    model.half()\n"
        "    buffer.fill_(1e5)  # expect: AMP401\n",
    ),
    good=_FILL_GOOD,
)

AMP404 = Rule(
    code="AMP404",
    name="fill-value-overflows-fp16-amp-readiness",
    severity=Severity.INFO,
    message="AMP readiness: fill value {value} is outside the float16 range (|v| <= 65504): fine in fp32, but it raises or becomes inf once this runs in fp16; use torch.finfo(x.dtype).min",
    why=_FILL_WHY + " This file shows no float16 use (AMP401 covers files that do), so today it is correct.",
    fix=_FILL_FIX,
    references=_FILL_REFS,
    bad=(
        "def attend(scores, mask):\n"
        "    return scores.masked_fill(mask == 0, -1e9)  # expect: AMP404\n",
        "import torch\n"
        "\n"
        "def causal_bias(n):\n"
        "    return torch.full((n, n), -1e30).triu(1)  # expect: AMP404\n",
    ),
    good=_FILL_GOOD,
)


def _amp401_fill_value_overflows_fp16(ctx: Context, value: ast.AST) -> bool:
    """AMP401 / AMP404: a float literal fill value (or a name bound to one) beyond float16's
    range; inf is representable. True when ``value`` is a number, so AMP402 need not look."""
    number = _float_value(ctx, value)
    if number is None:
        return False
    if abs(number) > FP16_MAX and math.isfinite(number):
        ctx.report_tiered(AMP401, AMP404, value, dtype="float16", value=_shown(ctx, value, number))
    return True


# ---------------------------------------------------------------------------------------------
# AMP402 hardcoded-finfo-fill-value (readiness twin: AMP405)

_FINFO_WHY = (
    "torch.finfo(torch.float32).min is -3.4e38, far outside float16's range: filling a float16 "
    "tensor with it raises, and torch.where makes it -inf. The dtype of the tensor changes under "
    "autocast or .half(); the constant does not."
)
_FINFO_FIX = "Ask the tensor for its own range: torch.finfo(scores.dtype).min."
_FINFO_REFS = ("https://pytorch.org/docs/stable/type_info.html#torch.torch.finfo", "https://pytorch.org/docs/stable/amp.html")
_FINFO_GOOD = (
    "import torch\n"
    "\n"
    "def attend(scores, mask):\n"
    "    return scores.half().masked_fill(mask, torch.finfo(scores.dtype).min)\n",
    "import torch\n"
    "\n"
    "def attend(scores, mask, dtype):\n"
    "    low = torch.finfo(torch.float16).min  # fits float16 and wider dtypes\n"
    "    return scores.masked_fill(mask, low), torch.finfo(dtype).min\n",
)

AMP402 = Rule(
    code="AMP402",
    name="hardcoded-finfo-fill-value",
    severity=Severity.ERROR,
    message="{value} hard-codes a dtype wider than float16 and overflows fp16 tensors ({evidence}): use torch.finfo(x.dtype).{which}",
    why=_FINFO_WHY + _TIER_NOTE.format(twin="AMP405"),
    fix=_FINFO_FIX,
    references=_FINFO_REFS,
    bad=(
        "import torch\n"
        "\n"
        "def attend(scores, mask):\n"
        "    scores = scores.to(torch.float16)\n"
        "    return scores.masked_fill(~mask, torch.finfo(torch.float32).min)  # expect: AMP402\n",
        "import torch\n"
        "\n"
        "MIN = torch.finfo(torch.float).min\n"
        "scaler = torch.amp.GradScaler('cuda')\n"
        "\n"
        "def attend(scores, mask):\n"
        "    scores.masked_fill_(mask, MIN)  # expect: AMP402\n"
        "    return torch.where(mask, -torch.finfo(torch.float32).max, scores)  # expect: AMP402\n",
    ),
    good=_FINFO_GOOD,
)

AMP405 = Rule(
    code="AMP405",
    name="hardcoded-finfo-fill-value-amp-readiness",
    severity=Severity.INFO,
    message="AMP readiness: {value} hard-codes a dtype wider than float16: fine in fp32, but it overflows once the tensor is fp16; use torch.finfo(x.dtype).{which}",
    why=_FINFO_WHY + " This file shows no float16 use (AMP402 covers files that do), so today it is correct.",
    fix=_FINFO_FIX,
    references=_FINFO_REFS,
    bad=(
        "import torch\n"
        "\n"
        "def attend(scores, mask):\n"
        "    return scores.masked_fill(~mask, torch.finfo(torch.float32).min)  # expect: AMP405\n",
        "import torch\n"
        "\n"
        "MIN = torch.finfo(torch.float).min\n"
        "\n"
        "def attend(scores, mask):\n"
        "    scores.masked_fill_(mask, MIN)  # expect: AMP405\n",
    ),
    good=_FINFO_GOOD,
)


def _amp402_hardcoded_finfo_fill_value(ctx: Context, value: ast.AST) -> None:
    """AMP402 / AMP405: ``torch.finfo(<a dtype wider than float16>).min/.max`` as a fill value."""
    finfo = _hardcoded_finfo(ctx, value)
    if finfo is not None:
        ctx.report_tiered(AMP402, AMP405, value, dtype="float16", value=finfo[0], which=finfo[1])


_FINFO = {"torch.finfo", "numpy.finfo"}
_WIDE_DTYPES = {"float32", "float", "float64", "double", "bfloat16"}


def _hardcoded_finfo(ctx: Context, node: ast.AST, follow_names: bool = True) -> tuple[str, str] | None:
    """(shown text, "min"/"max") for ``torch.finfo(torch.float32).min`` and friends."""
    expr = node
    while isinstance(expr, ast.UnaryOp) and isinstance(expr.op, (ast.USub, ast.UAdd)):
        expr = expr.operand
    if follow_names and target_key(expr) is not None:  # MIN or self.min bound to the constant
        value = ctx.value_of(expr)
        found = _hardcoded_finfo(ctx, value, follow_names=False) if value is not None else None
        return (f"{ast.unparse(expr)} = {found[0]}", found[1]) if found else None
    if not (isinstance(expr, ast.Attribute) and expr.attr in ("min", "max") and isinstance(expr.value, ast.Call)):
        return None
    call = expr.value
    if ctx.call_name(call) not in _FINFO or call.keywords or len(call.args) > 1:
        return None
    if call.args:
        dtype = ctx.qualname(call.args[0])
        if dtype is None and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
            dtype = call.args[0].value
        if dtype is None or dtype.rsplit(".", 1)[-1] not in _WIDE_DTYPES:
            return None
    return ast.unparse(node), expr.attr


# ---------------------------------------------------------------------------------------------
# AMP401 / AMP402: the walk that finds fill values

class FillValue(LintRule):
    """Finds the fill values of fill calls whose result may be float16; AMP401 and AMP402 decide."""

    rules = (AMP401, AMP402, AMP404, AMP405)
    tokens = ("masked_fill", "fill_", "full", "where")

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        for value in _fill_values(ctx, node):
            if not _amp401_fill_value_overflows_fp16(ctx, value):
                _amp402_hardcoded_finfo_fill_value(ctx, value)


# where the fill value sits: (positional indexes, keyword name)
_FILL_METHODS = {
    "masked_fill": ((1,), "value"),
    "masked_fill_": ((1,), "value"),
    "fill_": ((0,), "value"),
    "new_full": ((1,), "fill_value"),
    "where": ((1,), "other"),  # Tensor.where(condition, other)
}
_FILL_FUNCTIONS = {
    "torch.masked_fill": ((2,), "value"),
    "torch.full": ((1,), "fill_value"),
    "torch.full_like": ((1,), "fill_value"),
    "torch.where": ((1, 2), "other"),
}
_FILL_ATTRS = set(_FILL_METHODS) | {name.rsplit(".", 1)[-1] for name in _FILL_FUNCTIONS}


def _fill_values(ctx: Context, call: ast.Call) -> list[ast.AST]:
    """The fill-value arguments of a fill call whose result may be float16 (else none)."""
    func = call.func
    attr = spelled_name(ctx, func)
    if attr not in _FILL_ATTRS:
        return []
    name = ctx.call_name(call)
    if name is not None:
        where = _FILL_FUNCTIONS.get(name)
    elif isinstance(func, ast.Attribute):
        where = _FILL_METHODS.get(attr)
    else:
        where = None
    if where is None:
        return []
    indexes, keyword = where
    filled = func.value if name is None else call.args[0] if call.args and name not in ("torch.full", "torch.where") else None
    if filled is not None and _not_fp16(ctx, filled, call):
        return []  # x.float().masked_fill(mask, -1e9): the tensor is float32
    values = [call.args[i] for i in indexes if i < len(call.args)]
    if name == "torch.where" and len(values) == 2 and all(_is_number(ctx, v) for v in values):
        return []  # torch.where(mask, 0.0, -1e9): two Python numbers give a default-dtype (float32) tensor
    for kw in call.keywords:
        if kw.arg == keyword or (name == "torch.where" and kw.arg == "input"):
            values.append(kw.value)
        elif kw.arg == "dtype" and dtype_name(ctx, kw.value) not in ("float16", None):
            return []  # torch.full(..., dtype=torch.float32): an explicit wider dtype
        elif kw.arg == "dtype" and isinstance(kw.value, ast.Attribute) and kw.value.attr == "dtype" and (
            evident_precision(ctx, kw.value.value, False, call) in ("float32", "integer", "bfloat16")
        ):
            return []  # dtype=q.dtype where q = q.bfloat16(): bfloat16 and float32 hold the value
    return [v for v in values if not isinstance(v, ast.Starred)]


# ---------------------------------------------------------------------------------------------
# AMP403 epsilon-below-fp16-resolution (readiness twin: AMP406)

_EPS_WHY = (
    "An epsilon guards a division, log, sqrt or rsqrt against zero. float16 cannot hold values "
    "below 6e-8 at all and keeps few digits below 6.1e-5: 0 + 1e-8 is 0 in float16, so x / (n + "
    "1e-8) is inf and log(p + 1e-10) is -inf exactly when the guard was needed. Not reported where "
    "the guarded value cannot be float16: cast to float32 in the same function, an integer count "
    "(mask.sum(), len(...)), the output of an op autocast runs in float32 (softmax, sum, norm, "
    "log, exp, pow, ...), gradient-norm code in clipping and optimizers (gradients and optimizer "
    "state are float32 under AMP), bfloat16 (which holds these values), and optimizer or "
    "normalization-layer eps= arguments."
)
_EPS_FIX = "Do the guarded computation in float32 (n.float() + 1e-8), or use an epsilon float16 can represent: torch.finfo(x.dtype).eps."
_EPS_REFS = (
    "https://pytorch.org/docs/stable/type_info.html#torch.torch.finfo",
    "https://pytorch.org/docs/stable/amp.html#cuda-ops-that-can-autocast-to-float32",
)
_EPS_GOOD = (
    "import torch\n"
    "\n"
    "def build(params, dim):\n"
    "    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-8)  # optimizer eps is float32 state\n"
    "    norm = torch.nn.LayerNorm(dim, eps=1e-12)\n"
    "    return opt, norm\n",
    "import torch\n"
    "\n"
    "def normalize(x, mask):\n"
    "    with torch.autocast('cuda'):\n"
    "        n = x.norm(dim=-1, keepdim=True)  # autocast runs norm in float32\n"
    "        mean = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # an integer count\n"
    "        return x / (n + 1e-8), torch.log(x.float() + 1e-10), mean\n",
    "def schedule(step, lr):  # plain Python arithmetic is float64\n"
    "    return lr * 1e-8 + step * 1e-6\n",
)

AMP403 = Rule(
    code="AMP403",
    name="epsilon-below-fp16-resolution",
    severity=Severity.WARNING,
    message="epsilon {value} guards {operand}, which can be float16 ({evidence}): below 6.1e-05 it rounds to 0 or a subnormal in fp16; compute in float32 or use torch.finfo(x.dtype).eps",
    why=_EPS_WHY + _TIER_NOTE.format(twin="AMP406"),
    fix=_EPS_FIX,
    references=_EPS_REFS,
    bad=(
        "import torch\n"
        "\n"
        "def normalize(x):\n"
        "    h = x.half()\n"
        "    return h / (h.abs().amax(dim=-1, keepdim=True) + 1e-8)  # expect: AMP403\n",
        "import torch\n"
        "\n"
        "EPS = 1e-10\n"
        "\n"
        "def entropy(model, x, v):\n"
        "    with torch.autocast('cuda'):\n"
        "        p = model(x)\n"
        "        h = -(p * torch.log(p + EPS)).sum(-1)  # expect: AMP403\n"
        "    return h / torch.sqrt(v + 1e-12)  # expect: AMP403\n",
        "import torch\n"
        "\n"
        "def safe(x, w):\n"
        "    y = w / x.clamp(min=1e-8)  # expect: AMP403\n"
        "    return torch.clamp(y, min=0.00001).rsqrt()  # expect: AMP403\n"
        "\n"
        "scaler = torch.amp.GradScaler('cuda')\n",
    ),
    good=_EPS_GOOD,
)

AMP406 = Rule(
    code="AMP406",
    name="epsilon-below-fp16-resolution-amp-readiness",
    severity=Severity.INFO,
    message="AMP readiness: epsilon {value} guards {operand}: fine in fp32, but below 6.1e-05 it rounds to 0 or a subnormal once this runs in fp16; compute in float32 or use torch.finfo(x.dtype).eps",
    why=_EPS_WHY + " This file shows no float16 use (AMP403 covers files that do), so today it is correct.",
    fix=_EPS_FIX,
    references=_EPS_REFS,
    bad=(
        "def normalize(x, n):\n"
        "    return x / (n + 1e-8)  # expect: AMP406\n",
        "import torch\n"
        "\n"
        "def log_prob(p):\n"
        "    return torch.log(p.clamp(min=1e-12))  # expect: AMP406\n",
    ),
    good=_EPS_GOOD,
)


def _amp403_epsilon_below_fp16(ctx: Context, eps: ast.AST, value: float, operand: ast.AST, site: ast.AST) -> None:
    """AMP403 / AMP406: an epsilon below float16 resolution guards ``operand``. AMP403 where
    ``operand`` can be float16 here, with the evidence; where it can be float16 only if the code
    runs in fp16 at all, the file-level evidence decides (else AMP406)."""
    provenance = _Provenance(ctx, site)
    kind, evidence = provenance.of(operand)
    if kind not in ("low", "unknown") or provenance.in_float32_code():
        return
    fmt = {"value": _shown(ctx, eps, value), "operand": _describe(ctx, operand)}
    if kind == "low":
        ctx.report(AMP403, eps, evidence=evidence, **fmt)
    else:
        ctx.report_tiered(AMP403, AMP406, eps, dtype="float16", **fmt)


class SmallEpsilon(LintRule):
    rules = (AMP403, AMP406)
    tokens = ("e-", "E-", "0.0000")  # how a literal below 6.1e-5 is spelled

    def _eps(self, ctx: Context, node: ast.AST) -> float | None:
        value = _float_value(ctx, node)
        return value if value is not None and 0.0 < value < FP16_SMALLEST_NORMAL else None

    def _check_sum(self, ctx: Context, expr: ast.AST, site: ast.AST) -> None:
        """Report epsilons added inside ``expr`` (``n + 1e-8``, ``(v + eps) ** 0.5 * s``), unless
        what they are added to is evidently float32."""
        stack = [expr]
        while stack:
            cur = stack.pop()
            if isinstance(cur, ast.UnaryOp):
                stack.append(cur.operand)
            elif isinstance(cur, ast.BinOp):
                for side, other in ((cur.left, cur.right), (cur.right, cur.left)):
                    value = self._eps(ctx, side) if isinstance(cur.op, ast.Add) else None
                    if value is None:
                        stack.append(side)
                    else:
                        _amp403_epsilon_below_fp16(ctx, side, value, other, site)

    def visit_BinOp(self, node: ast.BinOp, ctx: Context) -> None:
        if isinstance(node.op, ast.Div):
            self._check_sum(ctx, node.right, node)

    def visit_AugAssign(self, node: ast.AugAssign, ctx: Context) -> None:
        if isinstance(node.op, ast.Div):
            self._check_sum(ctx, node.value, node)

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        func = node.func
        attr = spelled_name(ctx, func)
        if attr not in _EPS_ATTRS:
            return
        name = ctx.call_name(node)
        if name is None and not isinstance(func, ast.Attribute):
            return
        if name in _GUARDED_FUNCTIONS and node.args:
            self._check_sum(ctx, node.args[0], node)
        elif name is None and attr in _GUARDED_METHODS and not node.args:
            self._check_sum(ctx, func.value, node)
        elif name in _DIVIDES or (name is None and attr in _DIVIDE_METHODS):
            position = _DIVIDES[name] if name else _DIVIDE_METHODS[attr]
            divisor = node.args[position] if position < len(node.args) else next((k.value for k in node.keywords if k.arg == "other"), None)
            if divisor is not None:
                self._check_sum(ctx, divisor, node)
        elif name in _CLAMP_FUNCTIONS or (name is None and attr in _CLAMP_METHODS):
            position = _CLAMP_FUNCTIONS[name] if name else _CLAMP_METHODS[attr]
            low = node.args[position] if position < len(node.args) else next((k.value for k in node.keywords if k.arg == "min"), None)
            value = self._eps(ctx, low) if low is not None else None
            clamped = func.value if name is None else node.args[0] if node.args else None
            if value is not None and clamped is not None:
                _amp403_epsilon_below_fp16(ctx, low, value, clamped, node)


_GUARDED_FUNCTIONS = {"torch.log", "torch.log2", "torch.log10", "torch.sqrt", "torch.rsqrt"}
_GUARDED_METHODS = {"log", "log2", "log10", "sqrt", "rsqrt"}
_CLAMP_FUNCTIONS = {"torch.clamp": 1, "torch.clip": 1, "torch.clamp_min": 1}  # position of min
_CLAMP_METHODS = {"clamp": 0, "clamp_": 0, "clip": 0, "clip_": 0, "clamp_min": 0, "clamp_min_": 0}
_DIVIDES = {"torch.div": 1, "torch.true_divide": 1}
_DIVIDE_METHODS = {"div": 0, "div_": 0, "true_divide": 0}
_EPS_ATTRS = _GUARDED_METHODS | set(_CLAMP_METHODS) | set(_DIVIDE_METHODS) | {"clamp", "clip", "clamp_min", "div", "true_divide"}


# Ops that CUDA autocast runs in float32, whatever their input (torch docs, "CUDA Ops that can
# autocast to float32", and AT_FORALL_FP32 / AT_FORALL_FP32_SET_OPT_DTYPE in ATen's
# autocast_mode.h): their output is float32 unless the input was cast to float16 by hand.
_AUTOCAST_FP32_OPS = {
    "pow", "acos", "asin", "cosh", "sinh", "tan", "erfinv", "exp", "expm1", "log", "log10", "log1p", "log2",
    "reciprocal", "rsqrt", "softmax", "log_softmax", "softmin", "softplus", "sum", "prod", "cumsum", "cumprod",
    "norm", "vector_norm", "matrix_norm", "normalize", "dist", "cdist", "pdist", "renorm", "cosine_similarity",
    "layer_norm", "group_norm", "mse_loss", "l1_loss", "smooth_l1_loss", "nll_loss", "cross_entropy", "kl_div",
    "binary_cross_entropy_with_logits", "poisson_nll_loss",
}
# results that are Python numbers (float64) or integer tensors, never float16
_PYTHON_NUMBER_CALLS = {"len", "float", "int", "abs", "min", "max", "sum", "round"}
_NUMBER_METHODS = {"item", "numel", "size", "dim", "nelement", "tolist"}
_INTEGER_METHODS = {"count_nonzero", "argmax", "argmin", "nonzero", "long", "int", "bool", "numel"}
_CREATION_FUNCTIONS = {"tensor", "zeros", "ones", "empty", "full", "arange", "linspace", "rand", "randn", "eye", "as_tensor"}
_OPTIMIZER_BASES = ("Optimizer", "LRScheduler", "_LRScheduler")


def _describe(ctx: Context, node: ast.AST) -> str:
    text = ast.get_source_segment(ctx.source, node) or ast.unparse(node)
    text = " ".join(text.split())
    return f"`{text if len(text) <= 40 else text[:37] + '...'}`"


class _Provenance:
    """Where a guarded value comes from, within one function: "low" (float16 evident: cast or
    computed under fp16 autocast, with the evidence), "fp32", "integer", "python" (a Python
    number), "bf16", or "unknown" (a parameter, a module output: float16 only if the code runs in
    float16 at all)."""

    def __init__(self, ctx: Context, site: ast.AST):
        self.ctx = ctx
        self.site = site
        self._reading: dict[str, Binding | None] = {}  # inside `x = f(x)`, x means the previous x

    def of(self, expr: ast.AST, depth: int = 0) -> tuple[str, str]:
        if depth > 8:
            return "unknown", ""
        ctx = self.ctx
        evident = evident_precision(ctx, expr, False, self.site)
        if evident in ("float32", "integer"):
            return ("fp32" if evident == "float32" else "integer"), ""
        if evident == "bfloat16":
            return "bf16", ""
        if evident == "float16":
            return "low", self._cast_evidence(expr)
        if isinstance(expr, ast.Constant):
            return ("python", "") if type(expr.value) in (int, float, bool) else ("unknown", "")
        if isinstance(expr, ast.UnaryOp):
            return self.of(expr.operand, depth + 1)
        if isinstance(expr, ast.BinOp):
            return self._combine(self.of(expr.left, depth + 1), self.of(expr.right, depth + 1), expr)
        if isinstance(expr, ast.Subscript):
            return self.of(expr.value, depth + 1)
        if isinstance(expr, (ast.ListComp, ast.GeneratorExp)):
            return self.of(expr.elt, depth + 1)  # torch.stack([p.softmax(-1) for p in ps])
        if isinstance(expr, (ast.List, ast.Tuple)) and expr.elts:
            return self._combine_all([self.of(e, depth + 1) for e in expr.elts])
        if isinstance(expr, ast.Attribute):
            if expr.attr in ("shape", "ndim"):
                return "python", ""
            if expr.attr == "grad":
                return "fp32", ""  # gradients of float32 master weights (AMP keeps weights float32)
            if expr.attr in ("T", "mT", "data"):
                return self.of(expr.value, depth + 1)
        if isinstance(expr, ast.Call):
            return self._call(expr, depth)
        key = target_key(expr)
        binding = (self._reading[key] if key in self._reading else ctx.lookup(key)) if key else None
        if binding is None or binding.value is None:
            # num_tokens, self.ranknum[a], counts: integer-valued counts, whatever their dtype
            return ("integer", "") if _COUNT_NAME.search(_last_name(expr)) else ("unknown", "")
        outer = self._reading.get(key, False)
        self._reading[key] = binding.previous
        try:
            kind, evidence = self.of(binding.value, depth + 1)
        finally:
            if outer is False:
                del self._reading[key]
            else:
                self._reading[key] = outer
        if kind == "unknown" and binding.autocast is not None and binding.autocast.active:
            if binding.autocast.effective_dtype == "float16":
                line = getattr(binding.autocast.node, "lineno", 1)
                return "low", f"{_describe(ctx, expr)} is computed under fp16 autocast (line {line})"
            if binding.autocast.effective_dtype == "bfloat16":
                return "bf16", ""
        return kind, evidence

    def _cast_evidence(self, expr: ast.AST) -> str:
        """``cast to float16: `h = x.half()` on line 4``: the binding that made ``expr`` float16."""
        ctx = self.ctx
        base = expr
        while isinstance(base, (ast.Subscript, ast.Attribute, ast.Call)) and target_key(base) is None:
            base = base.func.value if isinstance(base, ast.Call) and isinstance(base.func, ast.Attribute) else getattr(base, "value", None)
            if base is None:
                return f"cast to float16 in {_describe(ctx, expr)}"
        key = target_key(base)
        binding = ctx.lookup(key) if key else None
        if binding is None or binding.value is None or isinstance(binding.node, ast.arg):
            return f"cast to float16 in {_describe(ctx, expr)}"
        return f"cast to float16: {_describe(ctx, binding.node)} on line {binding.node.lineno}"

    @classmethod
    def _combine(cls, left: tuple[str, str], right: tuple[str, str], expr: ast.BinOp) -> tuple[str, str]:
        """Type promotion: a float32 tensor on either side makes the result float32; a Python
        number or an integer tensor takes the other side's dtype."""
        kinds = {left[0], right[0]}
        if not kinds & {"fp32", "low", "unknown", "bf16"} and (isinstance(expr.op, ast.Div) or kinds == {"integer", "python"}):
            return "fp32", ""  # true division and int-tensor * float give the default dtype
        return cls._combine_all([left, right])

    @staticmethod
    def _combine_all(sides: list[tuple[str, str]]) -> tuple[str, str]:
        for kind in ("fp32", "low", "unknown", "bf16", "integer", "python"):
            for side in sides:
                if side[0] == kind:
                    return side
        return "unknown", ""

    def _call(self, call: ast.Call, depth: int) -> tuple[str, str]:
        ctx = self.ctx
        func = call.func
        name = ctx.call_name(call)
        spelled = spelled_name(ctx, func)
        if name is not None:
            if name in _PYTHON_NUMBER_CALLS or name.startswith(("math.", "numpy.", "np.")):
                return "python", ""
            if not name.startswith("torch."):
                return "unknown", ""
            operand = call.args[0] if call.args and not isinstance(call.args[0], ast.Starred) else None
            if spelled in _CREATION_FUNCTIONS:
                return "fp32", ""  # no dtype= (evident_precision saw none): the default dtype
            others = [self.of(a, depth + 1) for a in call.args[1:3] if not isinstance(a, (ast.Starred, ast.Constant))]
            if any(kind == "fp32" for kind, _ in others):
                return "fp32", ""  # torch.matmul(w, x.float()): the operands share a dtype (or promote to float32)
        elif isinstance(func, ast.Name):
            return ("python", "") if func.id in _PYTHON_NUMBER_CALLS and ctx.lookup(func.id) is None else ("unknown", "")
        elif isinstance(func, ast.Attribute):
            operand = func.value
            if spelled in _NUMBER_METHODS:
                return "python", ""
        else:
            return "unknown", ""
        if spelled in _INTEGER_METHODS:
            return "integer", ""
        if operand is None:
            return "unknown", ""
        inner = self.of(operand, depth + 1)
        if spelled == "sum" and (inner[0] == "integer" or _is_mask(operand)):
            return "integer", ""  # mask.sum(): a count
        if spelled in _AUTOCAST_FP32_OPS and inner[0] != "low":
            return "fp32", ""  # autocast runs it in float32
        return inner

    def in_float32_code(self) -> bool:
        """Gradient clipping and optimizer code: gradients, norms and optimizer state are float32
        under AMP (the master weights stay float32)."""
        ctx = self.ctx
        scope = ctx.scope
        while scope is not None:
            node = scope.node
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ("clip" in node.name or "grad_norm" in node.name):
                return True
            if isinstance(node, ast.ClassDef) and any(
                (ctx.qualname(base) or ast.unparse(base)).endswith(_OPTIMIZER_BASES) for base in node.bases
            ):
                return True
            scope = scope.parent
        return False


# num_tokens, token_count, self.ranknum: counts (not `discount`, a float)
_COUNT_NAME = re.compile(r"(^|_)(num|count|counts|numel)(_|$)|num$", re.IGNORECASE)


def _last_name(node: ast.AST) -> str:
    """``num_tokens`` for ``num_tokens``, ``self.num_tokens`` or ``self.ranknum[a]``."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def _is_mask(node: ast.AST) -> bool:
    while isinstance(node, (ast.Subscript, ast.Attribute)) and not (isinstance(node, ast.Attribute) and "mask" in node.attr.lower()):
        node = node.value
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return "mask" in name.lower() or isinstance(node, ast.Compare)
