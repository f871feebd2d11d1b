"""Helpers shared by several rule modules: what a call is named, which dtype a cast converts to,
which precision an expression evidently has, and per-file scratch space. Rule modules import
these from here, never from each other."""

from __future__ import annotations

import ast

from ..engine import Context, LintRule, dtype_name, target_key

__all__ = [
    "spelled_name", "module_data", "cast_target_dtype", "CAST_METHOD_DTYPES", "evident_precision", "dtype_arg",
    "DTYPE_PRESERVING",
]


def spelled_name(ctx: Context, func: ast.AST) -> str | None:
    """The called name as written (``x.sum`` -> "sum"), through an import alias for a bare name
    (``from torch import softmax as sm``: ``sm`` -> "softmax"). A cheap filter before qualnames."""
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        name = ctx.qualname(func)
        return name.rsplit(".", 1)[-1] if name else func.id
    return None


def module_data(ctx: Context, rule: LintRule) -> dict:
    """Scratch space of ``rule`` for the whole file (the module scope's; at module level it is
    also ``ctx.scope_data(rule)``, so the two must use different keys)."""
    scope = ctx.scope
    while scope.parent is not None:
        scope = scope.parent
    return scope.data.setdefault(type(rule).__name__, {})


# ---------------------------------------------------------------------------------------------
# Recognising casts

CAST_METHOD_DTYPES = {"half": "float16", "bfloat16": "bfloat16", "float": "float32", "double": "float64"}
_FLOAT_DTYPES = {
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16",
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
}
_TENSOR_TYPES = {"HalfTensor": "float16", "BFloat16Tensor": "bfloat16", "FloatTensor": "float32", "DoubleTensor": "float64"}


def _dtype_of(ctx: Context, node: ast.AST) -> str | None:
    """``torch.float16`` / ``torch.half`` / ``"bfloat16"`` / ``torch.float`` -> canonical name."""
    return _FLOAT_DTYPES.get(dtype_name(ctx, node) or "")


def _tensor_type_of(ctx: Context, node: ast.AST) -> str | None:
    """``torch.HalfTensor`` / ``torch.cuda.HalfTensor`` / ``"torch.cuda.HalfTensor"``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        name = node.value if node.value.startswith("torch.") else None
    else:
        name = ctx.qualname(node)
    if name is None or not name.startswith("torch."):
        return None
    return _TENSOR_TYPES.get(name.rsplit(".", 1)[1])


def cast_target_dtype(ctx: Context, call: ast.Call) -> str | None:
    """The floating dtype a tensor/module cast converts to, or None if ``call`` is not one:
    ``x.half()``, ``x.bfloat16()``, ``x.float()``, ``x.double()``, ``x.to(torch.float16)``,
    ``x.to(device, dtype=torch.bfloat16)``, ``x.type(torch.HalfTensor)``."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    attr = func.attr
    if attr in CAST_METHOD_DTYPES:
        result = None if call.args else CAST_METHOD_DTYPES[attr]
    elif attr == "to":
        result = None
        for arg in [*call.args, *(k.value for k in call.keywords if k.arg == "dtype")]:
            result = result or _dtype_of(ctx, arg)
    elif attr == "type" and len(call.args) + len(call.keywords) == 1:
        arg = call.args[0] if call.args else call.keywords[0].value
        result = _tensor_type_of(ctx, arg) or _dtype_of(ctx, arg)
    else:
        return None
    if result is None or ctx.qualname(func) is not None:  # `torch.Tensor.half(x)`, a module function
        return None
    return result


# ---------------------------------------------------------------------------------------------
# Evident precision

# the precision an expression evidently has: "float16", "bfloat16", "float32" (or wider), "integer" (or bool)
_CAST_METHODS = {
    "half": "float16", "bfloat16": "bfloat16", "float": "float32", "double": "float32",
    "long": "integer", "int": "integer", "bool": "integer",
}
_PRECISIONS = {
    "float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float": "float32", "float64": "float32",
    "double": "float32", "int64": "integer", "long": "integer", "int32": "integer", "int": "integer", "bool": "integer",
}
# methods whose result has the dtype of their receiver
DTYPE_PRESERVING = {
    "view", "reshape", "transpose", "permute", "contiguous", "squeeze", "unsqueeze", "flatten",
    "clone", "detach", "masked_fill", "t", "expand", "narrow", "chunk", "split",
}


def dtype_arg(ctx: Context, call: ast.Call) -> str | None:
    """The precision named by ``dtype=`` or a positional dtype (``x.to('cuda', torch.half)``)."""
    for kw in call.keywords:
        if kw.arg == "dtype":
            return _PRECISIONS.get(dtype_name(ctx, kw.value) or "")
    for arg in call.args:
        found = _PRECISIONS.get(dtype_name(ctx, arg) or "")
        if found:
            return found
    return None


def _if_branches(ctx: Context, node: ast.AST) -> dict[int, bool]:
    """For each enclosing ``if`` statement (within the function): is ``node`` in its else branch?"""
    out = {}
    child, parent = node, ctx.parent(node)
    while parent is not None and not isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
        if isinstance(parent, ast.If) and child is not parent.test:
            out[id(parent)] = any(child is stmt for stmt in parent.orelse)
        child, parent = parent, ctx.parent(parent)
    return out


def _exclusive_branches(ctx: Context, a: ast.AST, b: ast.AST) -> bool:
    """True when ``a`` and ``b`` sit in different branches of one ``if``: one never sees the other."""
    branches_a = _if_branches(ctx, a)
    return bool(branches_a) and any(branches_a.get(key, in_else) != in_else for key, in_else in _if_branches(ctx, b).items())


def evident_precision(ctx: Context, expr: ast.AST, autocast_is_low: bool, site: ast.AST | None = None, depth: int = 0) -> str | None:
    """"float16" / "bfloat16" / "float32" when the code makes the dtype of ``expr`` evident
    (explicit casts, ``dtype=``, names bound to those in the same function); None when unknown.
    ``autocast_is_low``: a name bound inside an enabled autocast region counts as low precision.
    ``site``: the visited node that uses ``expr`` (bindings in the other branch of an ``if`` are ignored)."""
    if depth > 3:
        return None
    if isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Attribute):
            if func.attr in _CAST_METHODS and not expr.args and not expr.keywords:
                return _CAST_METHODS[func.attr]
            if func.attr in ("to", "type"):
                return dtype_arg(ctx, expr)
            if func.attr in DTYPE_PRESERVING:
                return evident_precision(ctx, func.value, autocast_is_low, site, depth + 1)
        for kw in expr.keywords:
            if kw.arg == "dtype":
                return _PRECISIONS.get(dtype_name(ctx, kw.value) or "")
        return None
    if isinstance(expr, ast.Subscript) or (isinstance(expr, ast.Attribute) and expr.attr in ("T", "mT", "data")):
        return evident_precision(ctx, expr.value, autocast_is_low, site, depth + 1)
    if isinstance(expr, ast.Compare):
        return "integer"  # a bool tensor: (pred == y).sum() counts
    if isinstance(expr, ast.BinOp):
        sides = {
            evident_precision(ctx, expr.left, autocast_is_low, site, depth + 1),
            evident_precision(ctx, expr.right, autocast_is_low, site, depth + 1),
        }
        sides.discard(None)
        if len(sides) == 1:
            return sides.pop()
        sides.discard("integer")  # an integer tensor takes the floating operand's dtype
        return sides.pop() if len(sides) == 1 else "float32" if sides else None  # float16 + bfloat16 -> float32
    key = target_key(expr)
    binding = ctx.lookup(key) if key else None
    if binding is None or (site is not None and _exclusive_branches(ctx, binding.node, site)):
        return None
    if binding.value is not None:
        found = evident_precision(ctx, binding.value, autocast_is_low, binding.node, depth + 1)
        if found:
            return found
    state = binding.autocast
    if autocast_is_low and state is not None and state.active:
        return state.effective_dtype
    return None
