"""AMP1xx: autocast scope and API (loss outside the region, backward inside it, deprecated
device-specific API, autocast outputs used in a nested ``autocast(enabled=False)`` block).

Layout: shared helpers first; then each code has one section (``grep -n AMP103`` lands on it)
holding its :class:`Rule` (metadata, bad and good examples), the detector that decides and
reports it, and the helpers only that section uses.
"""

from __future__ import annotations

import ast
import re

from ...findings import Rule, Severity
from ..engine import AutocastState, Binding, Context, LintRule, target_key
from ._common import cast_target_dtype, module_data

# ---------------------------------------------------------------------------------------------
# Shared helpers


def _local_binding(ctx: Context, node: ast.AST) -> Binding | None:
    """The binding of a name / ``self.x`` made in the function (or module) being visited.

    Scope rules reason inside one function body, so a binding from an enclosing function, or a
    ``self.x`` assigned in another method, does not count.
    """
    key = target_key(node)
    if key is None:
        return None
    scope = ctx.scope
    if not key.startswith("self."):
        return scope.bindings.get(key)
    binding = ctx.lookup(key)
    if binding is None or not scope.is_function:
        return None
    body = scope.node
    inside = body.lineno <= getattr(binding.node, "lineno", 0) <= (body.end_lineno or body.lineno)  # type: ignore[attr-defined]
    return binding if inside else None


def _produced_in_autocast(ctx: Context, node: ast.AST) -> AutocastState | None:
    """The enabled autocast region that produced the value named by ``node`` in this function,
    unless that value was already cast to fp32/fp64 when it was bound."""
    binding = _local_binding(ctx, node)
    if binding is None or binding.autocast is None or not binding.autocast.active:
        return None
    if isinstance(binding.node, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)):
        return None  # a loop target or `as` name: not computed by an autocast op
    value = binding.value
    if isinstance(value, ast.Call) and cast_target_dtype(ctx, value) in _FULL:
        return None
    if not _may_be_tensor(value):
        return None
    return binding.autocast


_FULL = ("float32", "float64")
# calls and attributes whose result is a Python number, shape or dtype, not a tensor
_NOT_TENSOR_METHODS = frozenset("item tolist size dim ndimension numel nelement stride data_ptr element_size".split())
_NOT_TENSOR_ATTRS = frozenset("shape dtype device ndim is_cuda requires_grad layout".split())
_NOT_TENSOR_BUILTINS = frozenset("len int float bool str isinstance".split())


def _may_be_tensor(value: ast.AST | None) -> bool:
    """False for values that are clearly not tensors (``x.size(0)``, ``x.item()``, ``len(x)``,
    ``x.shape``, constants); None (tuple unpacking, loop targets) may be a tensor."""
    if isinstance(value, (ast.Constant, ast.Compare, ast.JoinedStr)):
        return False
    if isinstance(value, ast.Attribute):
        return value.attr not in _NOT_TENSOR_ATTRS
    if isinstance(value, ast.Call):
        func = value.func
        if isinstance(func, ast.Attribute):
            return func.attr not in _NOT_TENSOR_METHODS
        if isinstance(func, ast.Name):
            return func.id not in _NOT_TENSOR_BUILTINS
    return True


def _is_full_precision_cast(ctx: Context, node: ast.AST | None) -> bool:
    """``x.float()``, ``x.double()``, ``x.to(torch.float32)``, ``x.type(torch.float32)``."""
    return isinstance(node, ast.Call) and cast_target_dtype(ctx, node) in _FULL


def _autocast_names_used(ctx: Context, expr: ast.AST) -> list[ast.AST]:
    """Names in ``expr`` bound to autocast outputs in this function and not cast to fp32 on the
    way (``out.float()`` is fine)."""
    found = []
    stack = [expr]
    while stack:
        cur = stack.pop()
        if _is_full_precision_cast(ctx, cur):
            continue
        if target_key(cur) is not None:
            if _produced_in_autocast(ctx, cur) is not None:
                found.append(cur)
            continue
        if isinstance(cur, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(cur))
    return found


def _outside_autocast(state: AutocastState | None) -> bool:
    """No enabled autocast region applies (not inside one, or only in disabled ones)."""
    return state is None or (not state.active and state.enclosing_active() is None)


def _in_nested_disabled(state: AutocastState | None) -> bool:
    """Inside ``autocast(enabled=False)`` that sits inside an enabled region."""
    return state is not None and not state.active and state.enclosing_active() is not None


# ---------------------------------------------------------------------------------------------
# AMP101: loss outside autocast

AMP101 = Rule(
    code="AMP101",
    name="loss-outside-autocast",
    severity=Severity.ERROR,
    message="{name} runs outside autocast on '{arg}', an autocast output: compute the loss inside the autocast block",
    why=(
        "Outside the autocast region nothing upcasts the low-precision model output, so the loss "
        "(softmax, log, exp, sums over the batch) runs in fp16/bf16. Inside the region autocast "
        "runs losses such as cross_entropy, nll_loss, mse_loss and kl_div in fp32. The PyTorch "
        "AMP recipe computes both the forward pass and the loss under autocast."
    ),
    fix="Move the loss call into the `with torch.autocast(...)` block, or cast the output with `.float()` first.",
    references=(
        "https://pytorch.org/docs/stable/amp.html#cuda-ops-that-can-autocast-to-float32",
        "https://pytorch.org/docs/stable/notes/amp_examples.html#typical-mixed-precision-training",
    ),
    bad=(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def train_step(model, x, y):\n"
        "    with torch.autocast('cuda', dtype=torch.float16):\n"
        "        logits = model(x)\n"
        "    loss = F.cross_entropy(logits, y)  # expect: AMP101\n"
        "    return loss\n",
        "import torch\n"
        "from torch import nn\n"
        "\n"
        "criterion = nn.MSELoss()\n"
        "\n"
        "def train_step(model, x, y):\n"
        "    with torch.autocast(device_type='cuda'):\n"
        "        pred = model(x)\n"
        "    return criterion(pred, y)  # expect: AMP101\n",
        "from torch.amp import autocast\n"
        "import torch.nn as nn\n"
        "\n"
        "class Trainer:\n"
        "    def __init__(self):\n"
        "        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)\n"
        "\n"
        "    def step(self, model, x, y):\n"
        "        with autocast('cuda'):\n"
        "            self.out = model(x)\n"
        "        loss = self.loss_fn(  # expect: AMP101\n"
        "            self.out.flatten(0, 1), y.flatten())\n"
        "        return loss\n",
    ),
    good=(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def train_step(model, x, y):\n"
        "    with torch.autocast('cuda', dtype=torch.float16):\n"
        "        logits = model(x)\n"
        "        loss = F.cross_entropy(logits, y)\n"
        "    return loss\n",
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def train_step(model, x, y):\n"
        "    with torch.autocast('cuda'):\n"
        "        logits = model(x)\n"
        "    return F.cross_entropy(logits.float(), y)  # explicitly upcast first\n",
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def train_step(model, x, y, loss_fn):\n"
        "    with torch.autocast('cuda'):\n"
        "        logits = model(x)\n"
        "    return loss_fn(logits, y)  # an unknown callable: not assumed to be a loss\n",
    ),
)

_FUNCTIONAL_LOSSES = frozenset(
    "cross_entropy nll_loss mse_loss l1_loss smooth_l1_loss huber_loss kl_div binary_cross_entropy "
    "binary_cross_entropy_with_logits poisson_nll_loss gaussian_nll_loss margin_ranking_loss "
    "hinge_embedding_loss multilabel_margin_loss soft_margin_loss multilabel_soft_margin_loss "
    "cosine_embedding_loss multi_margin_loss triplet_margin_loss triplet_margin_with_distance_loss "
    "ctc_loss".split()
)


def _is_loss_class(name: str | None) -> bool:
    """``torch.nn.CrossEntropyLoss`` / ``torch.nn.modules.loss.MSELoss`` ..."""
    return name is not None and name.startswith("torch.nn.") and name.endswith("Loss")


def _loss_name(ctx: Context, call: ast.Call) -> str | None:
    """The loss a call computes: ``F.cross_entropy(...)``, ``criterion(...)`` where
    ``criterion = nn.MSELoss()``, or ``nn.L1Loss()(...)``; None for anything else."""
    func = call.func
    name = ctx.qualname(func)
    if name is not None:  # an imported function: F.cross_entropy, `from ... import mse_loss as mse`
        module, _, attr = name.rpartition(".")
        return f"F.{attr}" if attr in _FUNCTIONAL_LOSSES and module in ("torch.nn.functional", "torch") else None
    if isinstance(func, ast.Call):  # nn.L1Loss()(out, y)
        name = ctx.call_name(func)
        return name.rsplit(".", 1)[1] if _is_loss_class(name) else None
    value = ctx.value_of(func)  # criterion = nn.MSELoss(), possibly moved: nn.MSELoss().cuda()
    while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr in ("cuda", "to", "cpu"):
        value = value.func.value
    if isinstance(value, ast.Call):
        name = ctx.call_name(value)
        if _is_loss_class(name):
            return f"{target_key(func)} ({name.rsplit('.', 1)[1]})"  # type: ignore[union-attr]
    return None


class LossOutsideAutocast(LintRule):
    rules = (AMP101,)
    tokens = ("autocast",)

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        if "autocast" not in ctx.facts or not (node.args or node.keywords) or not _outside_autocast(ctx.autocast):
            return
        name = _loss_name(ctx, node)
        if name is None:
            return
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            used = _autocast_names_used(ctx, arg)
            if used:
                ctx.report(AMP101, node, name=name, arg=target_key(used[-1]))
                return


# ---------------------------------------------------------------------------------------------
# AMP102: backward inside autocast

AMP102 = Rule(
    code="AMP102",
    name="backward-inside-autocast",
    severity=Severity.ERROR,
    message="backward() runs inside an autocast region: dedent it out of the `with autocast(...)` block",
    why=(
        "Autocast is meant for the forward pass and the loss only. Backward ops already run in the "
        "dtype autocast chose for the matching forward ops; running backward() inside the region "
        "additionally autocasts whatever the backward pass computes (gradient hooks, double "
        "backward, recomputation), which the PyTorch docs explicitly advise against."
    ),
    fix="Exit the autocast block before calling `loss.backward()` / `scaler.scale(loss).backward()`.",
    references=(
        "https://pytorch.org/docs/stable/amp.html#torch.autocast",
        "https://pytorch.org/docs/stable/notes/amp_examples.html#typical-mixed-precision-training",
    ),
    bad=(
        "import torch\n"
        "\n"
        "def train_step(model, opt, x, y, loss_fn):\n"
        "    with torch.autocast('cuda'):\n"
        "        loss = loss_fn(model(x), y)\n"
        "        loss.backward()  # expect: AMP102\n"
        "    opt.step()\n",
        "import torch\n"
        "from torch.amp import GradScaler, autocast\n"
        "\n"
        "scaler = GradScaler('cuda')\n"
        "\n"
        "def train_step(model, opt, x, y, loss_fn):\n"
        "    with autocast('cuda', dtype=torch.float16):\n"
        "        loss = loss_fn(model(x), y)\n"
        "        scaler.scale(loss).backward()  # expect: AMP102\n"
        "    scaler.step(opt)\n"
        "    scaler.update()\n",
        "import torch\n"
        "\n"
        "@torch.autocast('cuda')\n"
        "def train_step(model, x, y, loss_fn):\n"
        "    loss = loss_fn(model(x), y)\n"
        "    torch.autograd.backward(loss)  # expect: AMP102\n",
    ),
    good=(
        "import torch\n"
        "\n"
        "def train_step(model, opt, x, y, loss_fn):\n"
        "    with torch.autocast('cuda'):\n"
        "        loss = loss_fn(model(x), y)\n"
        "    loss.backward()\n"
        "    opt.step()\n",
        "import torch\n"
        "\n"
        "def train_step(model, x, y, loss_fn):\n"
        "    with torch.autocast('cuda'):\n"
        "        loss = loss_fn(model(x), y)\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            loss.backward()  # autocast is off here\n",
    ),
)


class BackwardInsideAutocast(LintRule):
    rules = (AMP102,)
    tokens = ("backward",)

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        func = node.func
        if not isinstance(func, ast.Attribute) or func.attr != "backward":
            return
        state = ctx.autocast
        if state is None or not state.active:
            return
        name = ctx.qualname(func)  # a module function must be torch's; a value is a tensor
        if name is None or name == "torch.autograd.backward":
            ctx.report(AMP102, node)


# ---------------------------------------------------------------------------------------------
# AMP103: deprecated device-specific AMP API

AMP103 = Rule(
    code="AMP103",
    name="deprecated-amp-api",
    severity=Severity.WARNING,
    message="deprecated device-specific AMP API {old}: use {new}",
    why=(
        "torch.cuda.amp.* and torch.cpu.amp.* are deprecated aliases that emit FutureWarning and "
        "will be removed; the device-generic torch.amp API takes the device as an argument. "
        "Note the positional arguments differ: torch.cuda.amp.autocast(False) means enabled=False, "
        "while torch.amp.autocast('cuda', False) would pass False as the dtype."
    ),
    fix=(
        '`torch.cuda.amp.autocast(...)` -> `torch.amp.autocast("cuda", ...)`, '
        '`torch.cuda.amp.GradScaler(...)` -> `torch.amp.GradScaler("cuda", ...)`, '
        '`@torch.cuda.amp.custom_fwd` -> `@torch.amp.custom_fwd(device_type="cuda")` (torch.cpu.amp: "cpu"). '
        "The autofix does this, turning positional autocast arguments into keywords."
    ),
    references=(
        "https://pytorch.org/docs/stable/amp.html#torch.autocast",
        "https://pytorch.org/docs/stable/amp.html#torch.amp.GradScaler",
        "https://pytorch.org/docs/stable/amp.html#torch.amp.custom_fwd",
    ),
    bad=(
        "import torch\n"
        "\n"
        "scaler = torch.cuda.amp.GradScaler()  # expect: AMP103\n"
        "\n"
        "def train_step(model, x):\n"
        "    with torch.cuda.amp.autocast(dtype=torch.bfloat16):  # expect: AMP103\n"
        "        return model(x)\n",
        "from torch.cuda.amp import GradScaler, autocast  # expect: AMP103\n"
        "\n"
        "scaler = GradScaler()\n"
        "\n"
        "def train_step(model, x):\n"
        "    with autocast():\n"
        "        return model(x)\n",
        "import torch\n"
        "\n"
        "class Scale(torch.autograd.Function):\n"
        "    @staticmethod\n"
        "    @torch.cuda.amp.custom_fwd(cast_inputs=torch.float32)  # expect: AMP103\n"
        "    def forward(ctx, x):\n"
        "        return x * 2\n"
        "\n"
        "    @staticmethod\n"
        "    @torch.cuda.amp.custom_bwd  # expect: AMP103\n"
        "    def backward(ctx, g):\n"
        "        return g * 2\n",
    ),
    good=(
        "import torch\n"
        "\n"
        "scaler = torch.amp.GradScaler('cuda')\n"
        "\n"
        "def train_step(model, x):\n"
        "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "        return model(x)\n",
        "try:  # compatibility with PyTorch < 2.3\n"
        "    from torch.amp import GradScaler\n"
        "except ImportError:\n"
        "    from torch.cuda.amp import GradScaler\n",
        "import torch\n"
        "\n"
        "if hasattr(torch.amp, 'custom_fwd'):\n"
        "    from torch.amp import custom_fwd\n"
        "else:\n"
        "    from torch.cuda.amp import custom_fwd\n",
        "import torch\n"
        "from lightning_fabric.utilities.imports import _TORCH_GREATER_EQUAL_2_4\n"
        "\n"
        "def make_scaler(device):  # torch < 2.4 has no torch.amp.GradScaler(device=...)\n"
        "    return torch.amp.GradScaler(device=device) if _TORCH_GREATER_EQUAL_2_4 else torch.cuda.amp.GradScaler()\n",
    ),
)


class DeprecatedAmpApi(LintRule):
    rules = (AMP103,)
    tokens = ("cuda.amp", "cpu.amp", "cuda import amp", "cpu import amp")
    autofix_examples = (
        (
            "import torch\nscaler = torch.cuda.amp.GradScaler(init_scale=2.0**14)\n"
            "with torch.cuda.amp.autocast(True, torch.bfloat16):\n    y = f(x)\n",
            'import torch\nscaler = torch.amp.GradScaler("cuda", init_scale=2.0**14)\n'
            'with torch.amp.autocast("cuda", enabled=True, dtype=torch.bfloat16):\n    y = f(x)\n',
        ),
        (
            "import torch\n\n@torch.cuda.amp.custom_fwd\ndef f(ctx, x):\n    return x\n\n"
            "@torch.cuda.amp.custom_fwd(cast_inputs=torch.float32)\ndef g(ctx, x):\n    return x\n",
            'import torch\n\n@torch.amp.custom_fwd(device_type="cuda")\ndef f(ctx, x):\n    return x\n\n'
            '@torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)\ndef g(ctx, x):\n    return x\n',
        ),
        (
            "from torch.cuda.amp import GradScaler, autocast as ac\nscaler = GradScaler()\n"
            "def step(x):\n    with ac(enabled=False):\n        return x\n",
            'from torch.amp import GradScaler, autocast as ac\nscaler = GradScaler("cuda")\n'
            'def step(x):\n    with ac("cuda", enabled=False):\n        return x\n',
        ),
    )

    def visit_Attribute(self, node: ast.Attribute, ctx: Context) -> None:
        if node.attr not in _DEPRECATED_ATTRS:
            return
        qual = ctx.qualname(node)
        if qual not in _DEPRECATED or _not_a_use(ctx, node) or _in_compat_fallback(ctx, node):
            return
        device, name = _DEPRECATED[qual]
        # rewritten by dropping the `.cuda` / `.cpu` segment: needs the literal `torch.cuda.amp.X`
        base = node.value.value if isinstance(node.value, ast.Attribute) else None
        fixable = (
            name is not None
            and isinstance(base, ast.Attribute)
            and ctx.qualname(base.value) == "torch"
            and _rewritable_use(ctx, node, name)
        )
        ctx.report(AMP103, node, fixable=fixable, old=qual, new=_replacement(name or qual.rsplit(".", 1)[1], device))

    def visit_ImportFrom(self, node: ast.ImportFrom, ctx: Context) -> None:
        module = node.module or ""
        if node.level or not module.startswith(("torch.cuda.amp", "torch.cpu.amp")):
            return
        names = [a.name for a in node.names if f"{module}.{a.name}" in _DEPRECATED]
        if not names or _in_compat_fallback(ctx, node):
            return
        device = module.split(".")[1]
        fixable = all(_DEPRECATED.get(f"{module}.{a.name}", (None, None))[1] for a in node.names)
        module_data(ctx, self).setdefault("imports", []).append((node, module, device, names, fixable))

    def visit_Name(self, node: ast.Name, ctx: Context) -> None:
        """Uses of names imported from torch.cuda.amp: the import is fixable only if every use is."""
        binding = ctx.lookup(node.id)
        if binding is None or not isinstance(binding.node, ast.ImportFrom):
            return
        target = binding.import_target or ""
        if not target.startswith(("torch.cuda.amp.", "torch.cpu.amp.")):
            return
        name = target.rsplit(".", 1)[1]
        if not isinstance(node.ctx, ast.Load) or not _rewritable_use(ctx, node, name):
            module_data(ctx, self).setdefault("unfixable", set()).add(id(binding.node))

    def leave_scope(self, node: ast.AST, ctx: Context) -> None:
        if not isinstance(node, ast.Module):
            return
        data = module_data(ctx, self)
        unfixable = data.get("unfixable", set())
        for imp, module, device, names, fixable in data.get("imports", ()):
            listed = ", ".join(names)
            new = f'`from torch.amp import {listed}` and pass "{device}" at each use'
            ctx.report(AMP103, imp, fixable=fixable and id(imp) not in unfixable, old=f"from {module} import {listed}", new=new)

    def fix_transformer(self, positions):
        return _deprecated_api_fix(positions)


# deprecated qualified name -> (device, public name); the public name is None for the
# implementation-module spellings, which are reported but not rewritten.
_DEPRECATED: dict[str, tuple[str, str | None]] = {
    **{f"torch.cuda.amp.{n}": ("cuda", n) for n in ("autocast", "GradScaler", "custom_fwd", "custom_bwd")},
    **{f"torch.cpu.amp.{n}": ("cpu", n) for n in ("autocast", "GradScaler")},
    "torch.cuda.amp.autocast_mode.autocast": ("cuda", None),
    "torch.cuda.amp.autocast_mode.custom_fwd": ("cuda", None),
    "torch.cuda.amp.autocast_mode.custom_bwd": ("cuda", None),
    "torch.cuda.amp.grad_scaler.GradScaler": ("cuda", None),
    "torch.cpu.amp.autocast_mode.autocast": ("cpu", None),
    "torch.cpu.amp.grad_scaler.GradScaler": ("cpu", None),
}
_DEPRECATED_ATTRS = frozenset(q.rsplit(".", 1)[1] for q in _DEPRECATED)
_AUTOCAST_POSITIONAL = ("enabled", "dtype", "cache_enabled")  # torch.{cuda,cpu}.amp.autocast
_COMPAT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "AttributeError", "Exception", "BaseException"})


def _replacement(name: str, device: str) -> str:
    if name in ("custom_fwd", "custom_bwd"):
        return f'torch.amp.{name}(device_type="{device}", ...)'
    return f'torch.amp.{name}("{device}", ...)'


def _catches_compat_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for t in types:
        last = t.attr if isinstance(t, ast.Attribute) else t.id if isinstance(t, ast.Name) else None
        if last in _COMPAT_ERRORS:
            return True
    return False


# a version gate's name: `_TORCH_GREATER_EQUAL_2_4`, `is_torch_less_or_equal`, `TORCH_GE_2_4`
# (words between underscores, so `lossless` or `useless` are not one)
_VERSION_FLAG = re.compile(r"version|(^|_)(greater|less|lesser|older|newer)(_|$)|(^|_)(ge|gt|le|lt|geq|leq)_?\d", re.IGNORECASE)
# calls that test an installed version: lightning_utilities' RequirementCache("torch>=2.4") and
# compare_version("torch", operator.ge, "2.4.0"), packaging's Version, pkg_resources' parse_version
# (`version.parse(...)` is caught by its name)
_VERSION_CALLS = frozenset({"RequirementCache", "compare_version", "Version", "parse_version"})


def _is_version_check(ctx: Context, test: ast.AST, follow_names: bool = True) -> bool:
    """``hasattr(torch.amp, ...)``, ``torch.__version__ >= ...``, ``if TORCH_VERSION ...``, a flag
    named like ``_TORCH_GREATER_EQUAL_2_4``, ``RequirementCache("torch>=2.4")``, or a name bound
    in this file to one of these (``_NEW_AMP = RequirementCache("torch>=2.4")``)."""
    for sub in ast.walk(test):  # an `if` test: a small expression
        if isinstance(sub, ast.Call):
            func = sub.func
            if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr"):
                if sub.args and (ctx.qualname(sub.args[0]) or "").startswith("torch"):
                    return True
            called = ctx.call_name(sub) or ast.unparse(func)
            if called.rsplit(".", 1)[-1] in _VERSION_CALLS:
                return True
        word = sub.attr if isinstance(sub, ast.Attribute) else sub.id if isinstance(sub, ast.Name) else ""
        if word and _VERSION_FLAG.search(word):
            return True
        if follow_names and word and isinstance(sub.ctx, ast.Load):
            value = ctx.value_of(sub)
            if value is not None and _is_version_check(ctx, value, follow_names=False):
                return True
    return False


def _in_compat_fallback(ctx: Context, node: ast.AST) -> bool:
    """Inside ``except (ImportError, AttributeError):`` or either arm of an ``if`` (or a
    conditional expression) on hasattr / a version."""
    child, cur = node, ctx.parent(node)
    while cur is not None:
        if isinstance(cur, ast.ExceptHandler) and _catches_compat_error(cur):
            return True
        if isinstance(cur, (ast.If, ast.IfExp)) and child is not cur.test and _is_version_check(ctx, cur.test):
            return True
        child, cur = cur, ctx.parent(cur)
    return False


def _not_a_use(ctx: Context, node: ast.AST) -> bool:
    """``isinstance(s, torch.cuda.amp.GradScaler)``, ``func is torch.cuda.amp.autocast``,
    ``{torch.cuda.amp.autocast, ...}``: the class is only compared against or listed (nothing is
    constructed, no FutureWarning); not reported."""
    child, cur = node, ctx.parent(node)
    while cur is not None and not isinstance(cur, ast.stmt):
        if isinstance(cur, (ast.Compare, ast.List, ast.Tuple, ast.Set, ast.Dict)):
            return True
        if isinstance(cur, ast.Call):
            func = cur.func
            return func is not child and isinstance(func, ast.Name) and func.id in ("isinstance", "issubclass")
        child, cur = cur, ctx.parent(cur)
    return False


def _rewritable_use(ctx: Context, node: ast.AST, name: str) -> bool:
    """Whether the use ``node`` of deprecated ``name`` can be rewritten exactly: a call with
    plain arguments, or (custom_fwd / custom_bwd) a bare decorator."""
    parent = ctx.parent(node)
    if isinstance(parent, ast.Call) and parent.func is node:
        if any(isinstance(a, ast.Starred) for a in parent.args) or any(k.arg is None for k in parent.keywords):
            return False
        if name == "autocast":
            return len(parent.args) <= len(_AUTOCAST_POSITIONAL)
        if name in ("custom_fwd", "custom_bwd"):
            return len(parent.args) <= 1 and all(k.arg != "device_type" for k in parent.keywords)
        return True
    if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and node in parent.decorator_list:
        return name in ("custom_fwd", "custom_bwd")
    return False


def _deprecated_api_fix(positions):
    # libcst is imported only when fixing: importing it costs ~0.25 s on every flake8 run
    import libcst as cst
    from libcst.metadata import ParentNodeProvider, PositionProvider, ScopeProvider

    from ..fixes import PositionalFix

    tight_equal = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))

    def with_comma(arg: cst.Arg, gap: cst.BaseParenthesizableWhitespace | None = None) -> cst.Arg:
        return arg.with_changes(comma=cst.Comma(whitespace_after=gap or cst.SimpleWhitespace(" ")))

    def new_arguments(name: str, device: str, args: list[cst.Arg], first_gap=None) -> list[cst.Arg]:
        """The argument list of the torch.amp equivalent of a deprecated call. ``first_gap``: the
        whitespace after ``(``, kept for the new first argument when the arguments start on
        their own line."""
        quoted = cst.SimpleString(f'"{device}"')
        if name in ("custom_fwd", "custom_bwd"):  # a keyword after the (optional) positional function
            positional = [a for a in args if a.keyword is None]
            keywords = [a for a in args if a.keyword is not None]
            new = cst.Arg(value=quoted, keyword=cst.Name("device_type"), equal=tight_equal)
            if keywords:
                new = with_comma(new)
            if positional and positional[-1].comma is cst.MaybeSentinel.DEFAULT:
                positional[-1] = with_comma(positional[-1])
            return [*positional, new, *keywords]
        if name == "autocast":  # positional (enabled, dtype, cache_enabled) become keywords
            args = [
                a.with_changes(keyword=cst.Name(_AUTOCAST_POSITIONAL[i]), equal=tight_equal) if a.keyword is None else a
                for i, a in enumerate(args)
            ]
        first = cst.Arg(value=quoted)
        if not args:
            return [first]
        return [with_comma(first, first_gap if isinstance(first_gap, cst.ParenthesizedWhitespace) else None), *args]

    def drop_device(func: cst.Attribute) -> cst.Attribute:
        """``torch.cuda.amp.X`` -> ``torch.amp.X``."""
        amp = func.value
        return func.with_changes(value=amp.with_changes(value=amp.value.value))  # type: ignore[attr-defined]

    class _DeprecatedApiFix(PositionalFix):
        """``torch.cuda.amp.X`` -> ``torch.amp.X`` with the device argument added, at reported calls
        and decorators; ``from torch.cuda.amp import X`` -> ``from torch.amp import X`` plus the
        device argument at every use (only when libcst's scope analysis confirms each use is a call
        or decorator it can rewrite)."""

        METADATA_DEPENDENCIES = (PositionProvider, ScopeProvider, ParentNodeProvider)

        def __init__(self, positions):
            super().__init__(positions)
            self.uses: dict[int, tuple[str, str]] = {}  # id(Name node) -> (imported name, device)
            self.imports: set[int] = set()

        def visit_Module(self, node: cst.Module) -> None:
            scopes = set(self.metadata[ScopeProvider].values())
            for scope in scopes:
                if scope is None:
                    continue
                for assignment in scope.assignments:
                    imp = getattr(assignment, "node", None)
                    if isinstance(imp, cst.ImportFrom) and id(imp) not in self.imports and self.targeted(imp):
                        self._plan_import(imp, scope)

        def _plan_import(self, imp: cst.ImportFrom, scope) -> None:
            device = "cuda" if "cuda" in cst.Module([]).code_for_node(imp.module) else "cpu"  # type: ignore[arg-type]
            uses: dict[int, tuple[str, str]] = {}
            for alias in imp.names:  # type: ignore[union-attr]
                name = alias.name.value  # type: ignore[union-attr]
                local = alias.asname.name.value if alias.asname else name  # type: ignore[union-attr]
                for assignment in scope.assignments[local]:
                    if getattr(assignment, "node", None) is not imp:
                        return  # the name is rebound in this scope: not provably the import
                    for access in assignment.references:
                        if len(access.referents) != 1 or not self._rewritable(access.node, name):
                            return
                        uses[id(access.node)] = (name, device)
            self.imports.add(id(imp))
            self.uses.update(uses)

        def _rewritable(self, node: cst.CSTNode, name: str) -> bool:
            parent = self.get_metadata(ParentNodeProvider, node, None)
            if isinstance(parent, cst.Call) and parent.func is node:
                positional = [a for a in parent.args if a.keyword is None]
                if any(a.star for a in parent.args) or any(a.keyword and a.keyword.value == "device_type" for a in parent.args):
                    return False
                return len(positional) <= {"autocast": 3, "GradScaler": 6}.get(name, 1)
            return isinstance(parent, cst.Decorator) and name in ("custom_fwd", "custom_bwd")

        def leave_ImportFrom(self, original: cst.ImportFrom, updated: cst.ImportFrom) -> cst.ImportFrom:
            if id(original) not in self.imports:
                return updated
            self.applied += 1
            return updated.with_changes(module=cst.Attribute(value=cst.Name("torch"), attr=cst.Name("amp")))

        def _deprecated_attr(self, func: cst.BaseExpression) -> tuple[str, str] | None:
            """(name, device) when ``func`` is a reported ``torch.cuda.amp.X`` attribute."""
            if not isinstance(func, cst.Attribute) or not self.targeted(func):
                return None
            amp = func.value
            if not (isinstance(amp, cst.Attribute) and amp.attr.value == "amp" and isinstance(amp.value, cst.Attribute)):
                return None
            device = amp.value.attr.value
            return (func.attr.value, device) if device in ("cuda", "cpu") else None

        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            if isinstance(original.func, cst.Name) and id(original.func) in self.uses:
                name, device = self.uses[id(original.func)]
                return updated.with_changes(args=new_arguments(name, device, list(updated.args), updated.whitespace_before_args))
            found = self._deprecated_attr(original.func)
            if found is None:
                return updated
            self.applied += 1
            name, device = found
            args = new_arguments(name, device, list(updated.args), updated.whitespace_before_args)
            return updated.with_changes(func=drop_device(updated.func), args=args)  # type: ignore[arg-type]

        def leave_Decorator(self, original: cst.Decorator, updated: cst.Decorator) -> cst.Decorator:
            deco = original.decorator
            if isinstance(deco, cst.Name) and id(deco) in self.uses:
                name, device = self.uses[id(deco)]
                return updated.with_changes(decorator=cst.Call(func=updated.decorator, args=new_arguments(name, device, [])))
            found = self._deprecated_attr(deco)
            if found is None:
                return updated
            self.applied += 1
            name, device = found
            return updated.with_changes(decorator=cst.Call(func=drop_device(updated.decorator), args=new_arguments(name, device, [])))  # type: ignore[arg-type]

    return _DeprecatedApiFix(positions)


# ---------------------------------------------------------------------------------------------
# AMP104: autocast outputs inside a nested autocast(enabled=False) block

AMP104 = Rule(
    code="AMP104",
    name="autocast-output-in-disabled-region",
    severity=Severity.ERROR,
    message="{names} from the enclosing autocast region ({dtype}) used under autocast(enabled=False) without .float(): cast to fp32 first ({first}.float())",
    why=(
        "autocast(enabled=False) only stops autocasting new ops; tensors produced in the enclosing "
        "region are still fp16/bf16. Ops on them run in low precision (the very thing the "
        "disabled region was meant to avoid) or fail with a dtype mismatch against fp32 tensors."
    ),
    fix="Cast the autocast outputs on entry: `x = x.float()` (or use `x.float()` in the expression).",
    references=(
        "https://pytorch.org/docs/stable/amp.html#torch.autocast",
        "https://pytorch.org/docs/stable/notes/amp_examples.html#autocast-and-custom-autograd-functions",
    ),
    bad=(
        "import torch\n"
        "\n"
        "def attention(q_proj, k_proj, x):\n"
        "    with torch.autocast('cuda'):\n"
        "        q = q_proj(x)\n"
        "        k = k_proj(x)\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            scores = q @ k.transpose(-1, -2)  # expect: AMP104\n"
        "    return scores\n",
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def train_step(model, x, y):\n"
        "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "        logits = model(x)\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            print(logits.shape)  # metadata only: fine\n"
        "            loss = F.cross_entropy(logits, y)  # expect: AMP104\n"
        "            aux = logits.pow(2).mean()\n"
        "    return loss + aux\n",
        "from torch.cuda.amp import autocast\n"
        "\n"
        "class Head:\n"
        "    def forward(self, x):\n"
        "        with autocast():\n"
        "            self.h = self.proj(x)\n"
        "            with autocast(enabled=False):\n"
        "                return self.norm(self.h)  # expect: AMP104\n",
    ),
    good=(
        "import torch\n"
        "\n"
        "def attention(q_proj, k_proj, x):\n"
        "    with torch.autocast('cuda'):\n"
        "        q = q_proj(x)\n"
        "        k = k_proj(x)\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            scores = q.float() @ k.float().transpose(-1, -2)\n"
        "    return scores\n",
        "import torch\n"
        "\n"
        "def attention(q_proj, x):\n"
        "    with torch.autocast('cuda'):\n"
        "        q = q_proj(x)\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            q = q.float()\n"
        "            scores = q @ q.transpose(-1, -2)\n"
        "    return scores\n",
        "import torch\n"
        "\n"
        "def step(model, x):\n"
        "    with torch.autocast('cuda'):\n"
        "        h = model(x).float()\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            return h.softmax(-1)\n",
    ),
)

# attributes that read metadata or leave the tensor's precision irrelevant: harmless on fp16/bf16
_HARMLESS_USES = frozenset("shape dtype device size dim ndim ndimension numel requires_grad is_cuda layout backward item tolist".split())


class AutocastOutputInDisabledRegion(LintRule):
    rules = (AMP104,)
    tokens = ("enabled=False", "enabled = False", "autocast(False")

    def visit_Name(self, node: ast.Name, ctx: Context) -> None:
        if isinstance(node.ctx, ast.Load):
            self._check(node, ctx)

    def visit_Attribute(self, node: ast.Attribute, ctx: Context) -> None:
        if isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) and node.value.id == "self":
            self._check(node, ctx)

    def _check(self, node: ast.AST, ctx: Context) -> None:
        state = ctx.autocast
        if not _in_nested_disabled(state):
            return
        produced = _produced_in_autocast(ctx, node)
        if produced is None:
            return
        parent = ctx.parent(node)
        if isinstance(parent, ast.Attribute) and parent.attr in _HARMLESS_USES:
            return
        if isinstance(parent, ast.Attribute) and _is_full_precision_cast(ctx, ctx.parent(parent)):
            return
        if isinstance(parent, ast.Call) and parent.func is node:
            return  # calling it: not a tensor
        key = (id(state.node), target_key(node))
        data = ctx.scope_data(self)
        seen = data.setdefault("seen", set())
        if key in seen:
            return
        seen.add(key)
        stmt = parent
        while stmt is not None and not isinstance(stmt, ast.stmt):
            stmt = ctx.parent(stmt)
        pending = data.setdefault("pending", {})  # one finding per statement, naming every tensor
        if id(stmt) in pending:
            pending[id(stmt)][1].append(target_key(node))
        else:
            pending[id(stmt)] = (node, [target_key(node)], produced.effective_dtype or "low precision")

    def leave_scope(self, node: ast.AST, ctx: Context) -> None:
        for first, names, dtype in ctx.scope_data(self).get("pending", {}).values():
            quoted = ", ".join(f"'{n}'" for n in names)
            ctx.report(AMP104, first, names=quoted, dtype=dtype, first=names[0])
