"""AMP2xx: manual casts (``.half()`` next to autocast, pure low-precision training, GradScaler
with bf16 autocast).

Layout: each code has one section (``grep -n AMP202`` lands on it) holding its :class:`Rule`
(metadata, bad and good examples) and the function that decides and reports it. AMP201 and
AMP202 share one walk, :class:`ManualCasts` after their sections: it records the low-precision
casts, the optimizers built from ``.parameters()`` and the file's autocast / GradScaler use. A
cast whose model's parameters reach an optimizer in the same scope is AMP202 (which claims it);
when the file ends, AMP201 reports the unclaimed casts of a file that uses AMP.
"""

from __future__ import annotations

import ast

from ...findings import Rule, Severity
from ..engine import AUTOCAST_NAMES, GRADSCALER_NAMES, Context, LintRule, autocast_call, target_key
from ._common import CAST_METHOD_DTYPES, cast_target_dtype, module_data

_LOW = ("float16", "bfloat16")


# ---------------------------------------------------------------------------------------------
# Helpers shared by the checks

def _describe_cast(call: ast.Call, dtype: str) -> str:
    attr = call.func.attr  # type: ignore[attr-defined]
    return f".{attr}()" if attr in CAST_METHOD_DTYPES else f".{attr}(torch.{dtype})"


def _cast_subject(ctx: Context, call: ast.Call) -> str | None:
    """What a low-precision cast converts in place or rebinds: ``model`` for ``model.half()``
    as a statement, ``model = Net().half().cuda()``, ``self.model = self.model.half()``."""
    node: ast.AST = call
    parent = ctx.parent(node)
    while isinstance(parent, ast.Attribute):  # climb the method chain `.half().cuda()`
        outer = ctx.parent(parent)
        if not (isinstance(outer, ast.Call) and outer.func is parent):
            return None
        node, parent = outer, ctx.parent(outer)
    if isinstance(parent, ast.Expr):
        return target_key(call.func.value)  # type: ignore[attr-defined]
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        return target_key(parent.targets[0])
    return None


def _is_optimizer(name: str | None) -> bool:
    """``torch.optim.AdamW``, ``bitsandbytes.optim.Adam8bit``, ``apex.optimizers.FusedAdam``."""
    if not name:
        return False
    parts = name.split(".")
    packages = parts[:-1]
    return ("optim" in packages or "optimizers" in packages) and "lr_scheduler" not in packages and "swa_utils" not in packages


def _optimizer_around(ctx: Context, node: ast.AST) -> str | None:
    """The optimizer call that ``node`` (a ``.parameters()`` call) is an argument of, if any."""
    child, cur = node, ctx.parent(node)
    while cur is not None and not isinstance(cur, ast.stmt):
        if isinstance(cur, ast.Call) and cur.func is not child:
            name = ctx.call_name(cur)
            if _is_optimizer(name):
                return name.rsplit(".", 1)[1]  # type: ignore[union-attr]
        child, cur = cur, ctx.parent(cur)
    return None


def _amp_call(ctx: Context, call: ast.Call) -> str | None:
    """'autocast' / 'GradScaler' when ``call`` constructs one (any spelling of the API)."""
    func = call.func
    last = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if last not in ("autocast", "GradScaler"):
        return None
    name = ctx.call_name(call)
    if name in AUTOCAST_NAMES:
        return "autocast"
    if name in GRADSCALER_NAMES:
        return "GradScaler"
    return None


# ---------------------------------------------------------------------------------------------
# AMP201 manual-cast-with-autocast

AMP201 = Rule(
    code="AMP201",
    name="manual-cast-with-autocast",
    severity=Severity.WARNING,
    message="manual cast {cast} in a file that uses {amp}: keep weights and inputs fp32 and let autocast choose the precision per op",
    why=(
        "Autocast keeps fp32 weights and casts per op: matmuls and convolutions to fp16/bf16, "
        "softmax, norms and losses to fp32. A manual .half() / .to(torch.float16) forces every "
        "later op into low precision (including the ones autocast would have kept in fp32), and "
        "a cast model loses its fp32 master weights; GradScaler.unscale_ raises on fp16 gradients."
    ),
    fix="Remove the cast and keep the model and inputs in fp32; run the forward pass and loss under `torch.autocast`.",
    references=(
        "https://pytorch.org/docs/stable/amp.html#autocasting",
        "https://pytorch.org/docs/stable/notes/amp_examples.html",
    ),
    bad=(
        "import torch\n"
        "\n"
        "def train_step(model, x, y, loss_fn):\n"
        "    x = x.half()  # expect: AMP201\n"
        "    with torch.autocast('cuda'):\n"
        "        return loss_fn(model(x), y)\n",
        "import torch\n"
        "\n"
        "def evaluate(model, batch):\n"
        "    inputs = batch.to('cuda', dtype=torch.bfloat16)  # expect: AMP201\n"
        "    return model(inputs)\n"
        "\n"
        "scaler = torch.amp.GradScaler('cuda')\n",
        "import torch\n"
        "from torch.amp import autocast\n"
        "\n"
        "def forward(model, x):\n"
        "    model.decoder.half()  # expect: AMP201\n"
        "    feats = x.type(torch.cuda.HalfTensor)  # expect: AMP201\n"
        "    with autocast('cuda'):\n"
        "        return model(feats)\n",
    ),
    good=(
        "import torch\n"
        "\n"
        "def train_step(model, x, y, loss_fn):\n"
        "    with torch.autocast('cuda'):\n"
        "        return loss_fn(model(x), y)\n",
        "def export_fp16(model):  # no autocast in this file: a deliberate conversion\n"
        "    return model.half()\n",
        "import torch\n"
        "import torch.nn.functional as F\n"
        "\n"
        "def attend(q, k, v):\n"
        "    with torch.autocast('cuda'):\n"
        "        q = q * 0.125\n"
        "    if q.dtype == torch.float32:  # the fused kernel needs half precision: a dtype-aware cast\n"
        "        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()\n"
        "    return F.scaled_dot_product_attention(q, k, v)\n",
        "import torch\n"
        "\n"
        "def loss_fp32(model, x):\n"
        "    with torch.autocast('cuda'):\n"
        "        out = model(x)\n"
        "    return out.float().pow(2).mean()  # casting up to fp32 is fine\n",
    ),
)


def _amp201_manual_cast_with_autocast(ctx: Context, data: dict) -> None:
    """AMP201, when the file ends: each low-precision cast that AMP202 did not claim and that does
    not depend on a dtype test, in a file that uses autocast or GradScaler. ``data``: the
    walk's file-wide records (``amp``, ``all_casts``, ``claimed``)."""
    amp = set(data.get("amp", ()))
    if "autocast" in ctx.facts:
        amp.add("autocast")
    if "gradscaler" in ctx.facts:
        amp.add("GradScaler")
    if not amp:
        return
    uses = " and ".join(sorted(amp))
    claimed = data.get("claimed", set())
    for cast, dtype in data.get("all_casts", ()):
        if id(cast) not in claimed and not _under_dtype_check(ctx, cast):  # a dtype-aware conversion is deliberate
            ctx.report(AMP201, cast, cast=_describe_cast(cast, dtype), amp=uses)


def _under_dtype_check(ctx: Context, node: ast.AST) -> bool:
    """``if q.dtype == torch.float32: q = q.half()``: the cast depends on a dtype test (a kernel
    that needs half precision, a serialization format), so it is not a blind cast next to autocast."""
    child, parent = node, ctx.parent(node)
    while parent is not None and not isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
        if isinstance(parent, (ast.If, ast.IfExp)) and child is not parent.test:
            if any(isinstance(n, ast.Attribute) and n.attr == "dtype" for n in ast.walk(parent.test)):
                return True
        child, parent = parent, ctx.parent(parent)
    return False


# ---------------------------------------------------------------------------------------------
# AMP202 pure-low-precision-training

AMP202 = Rule(
    code="AMP202",
    name="pure-low-precision-training",
    severity=Severity.ERROR,
    message="'{model}' is cast to {dtype} and its parameters go to {optimizer}: no fp32 master weights; keep the model fp32 and train under autocast",
    why=(
        "With the weights themselves in fp16/bf16 the optimizer updates them in low precision: an "
        "update smaller than eps*|w| (2^-11 for fp16, 2^-8 for bf16) rounds away, so small "
        "learning rates and late-training updates silently vanish; fp16 Adam's eps=1e-8 "
        "underflows to 0; and GradScaler.unscale_ raises 'Attempting to unscale FP16 gradients'. "
        "Mixed precision keeps fp32 weights and lets autocast cast per op."
    ),
    fix="Drop the .half() / .to(torch.bfloat16) on the model; wrap the forward pass and loss in `torch.autocast`.",
    references=(
        "https://pytorch.org/docs/stable/amp.html#gradient-scaling",
        "https://pytorch.org/docs/stable/notes/amp_examples.html",
    ),
    bad=(
        "import torch\n"
        "\n"
        "model = Net().half()  # expect: AMP202\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n",
        "import torch\n"
        "from torch.optim import AdamW\n"
        "\n"
        "def build(cfg):\n"
        "    model = Net(cfg)\n"
        "    model.to('cuda', dtype=torch.bfloat16)  # expect: AMP202\n"
        "    opt = AdamW([{'params': model.parameters(), 'lr': cfg.lr}])\n"
        "    return model, opt\n",
        "import torch\n"
        "\n"
        "class Trainer:\n"
        "    def __init__(self, net):\n"
        "        self.model = net\n"
        "        self.opt = torch.optim.Adam(self.model.parameters(), eps=1e-8)\n"
        "        self.model.half()  # expect: AMP202\n",
    ),
    good=(
        "import torch\n"
        "\n"
        "model = Net()\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n",
        "import torch\n"
        "\n"
        "def build():\n"
        "    teacher = Net().half()  # frozen, never optimised\n"
        "    student = Net()\n"
        "    opt = torch.optim.AdamW(student.parameters(), eps=1e-8)\n"
        "    return teacher, student, opt\n",
        "import torch\n"
        "\n"
        "model = Net().half()\n"
        "model = Net()  # rebound to a new fp32 model before the optimizer sees it\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n",
    ),
)


def _amp202_pure_low_precision_training(ctx: Context, walk: LintRule, key: str, optimizer: str) -> None:
    """AMP202: the model ``key`` was cast to low precision and its parameters go to ``optimizer``
    in the same scope. The cast is claimed, so AMP201 does not report it again."""
    cast, dtype = ctx.scope_data(walk)["casts"].pop(key)
    module_data(ctx, walk).setdefault("claimed", set()).add(id(cast))
    ctx.report(AMP202, cast, model=key, dtype=dtype, optimizer=optimizer)


# ---------------------------------------------------------------------------------------------
# AMP201 / AMP202: the one walk that records casts, optimizers and AMP use

class ManualCasts(LintRule):
    """Records what AMP201 and AMP202 decide on; the decisions are their functions above."""

    rules = (AMP201, AMP202)
    tokens = ("half", "float16", "Half")

    def visit_Assign(self, node: ast.Assign, ctx: Context) -> None:
        casts = ctx.scope_data(self).get("casts")
        if casts:  # a rebinding forgets an earlier cast (a cast in the value records it again)
            for target in node.targets:
                casts.pop(target_key(target), None)

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        func = node.func
        attr = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if attr in ("half", "bfloat16", "to", "type"):
            self._cast(node, ctx)
        elif attr in ("parameters", "named_parameters") and isinstance(func, ast.Attribute):
            self._parameters(node, func, ctx)
        elif attr in ("autocast", "GradScaler"):
            used = _amp_call(ctx, node)
            if used:
                module_data(ctx, self).setdefault("amp", set()).add(used)

    def _cast(self, node: ast.Call, ctx: Context) -> None:
        dtype = cast_target_dtype(ctx, node)
        if dtype not in _LOW:
            return
        module_data(ctx, self).setdefault("all_casts", []).append((node, dtype))
        key = _cast_subject(ctx, node)
        if key is None:
            return
        data = ctx.scope_data(self)
        data.setdefault("casts", {}).setdefault(key, (node, dtype))
        optimizer = data.get("optimizers", {}).get(key)
        if optimizer:
            _amp202_pure_low_precision_training(ctx, self, key, optimizer)

    def _parameters(self, node: ast.Call, func: ast.Attribute, ctx: Context) -> None:
        key = target_key(func.value)
        if key is None:
            return
        optimizer = _optimizer_around(ctx, node)
        if optimizer is None:
            return
        data = ctx.scope_data(self)
        data.setdefault("optimizers", {})[key] = optimizer
        if key in data.get("casts", {}):
            _amp202_pure_low_precision_training(ctx, self, key, optimizer)

    def leave_scope(self, node: ast.AST, ctx: Context) -> None:
        if not isinstance(node, ast.Module):
            return
        _amp201_manual_cast_with_autocast(ctx, module_data(ctx, self))


# ---------------------------------------------------------------------------------------------
# AMP203 gradscaler-with-bf16

AMP203 = Rule(
    code="AMP203",
    name="gradscaler-with-bf16",
    severity=Severity.INFO,
    message="GradScaler is unnecessary with bf16 autocast: bf16 has fp32's exponent range, so gradients do not underflow; drop the scaler",
    why=(
        "Loss scaling exists because fp16 gradients underflow below 6e-8. bfloat16 has the same "
        "8-bit exponent as fp32, so its gradients do not underflow and the scaler only adds a "
        "multiply, an inf/NaN check and a host sync per step (and may skip steps for nothing)."
    ),
    fix="Remove the GradScaler for bf16 runs, or build it with `enabled=(amp_dtype == torch.float16)`.",
    references=(
        "https://pytorch.org/docs/stable/amp.html#gradient-scaling",
        "https://pytorch.org/docs/stable/amp.html#torch.autocast",
    ),
    bad=(
        "import torch\n"
        "\n"
        "scaler = torch.amp.GradScaler('cuda')  # expect: AMP203\n"
        "\n"
        "def train_step(model, opt, x):\n"
        "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "        loss = model(x).sum()\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.step(opt)\n"
        "    scaler.update()\n",
        "import torch\n"
        "from torch.amp import GradScaler\n"
        "\n"
        "def train(model, x):\n"
        "    scaler = GradScaler('cpu')  # expect: AMP203\n"
        "    with torch.autocast('cpu'):  # CPU autocast defaults to bf16\n"
        "        loss = model(x).sum()\n"
        "    scaler.scale(loss).backward()\n",
    ),
    good=(
        "import torch\n"
        "\n"
        "scaler = torch.amp.GradScaler('cuda')\n"
        "\n"
        "def train_step(model, x):\n"
        "    with torch.autocast('cuda', dtype=torch.float16):\n"
        "        loss = model(x).sum()\n"
        "    scaler.scale(loss).backward()\n",
        "import torch\n"
        "\n"
        "def train(model, x, amp_dtype):\n"
        "    scaler = torch.amp.GradScaler('cuda', enabled=amp_dtype == torch.float16)\n"
        "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "        loss = model(x).sum()\n"
        "    scaler.scale(loss).backward()\n",
    ),
)


class GradScalerWithBf16(LintRule):
    rules = (AMP203,)
    tokens = ("GradScaler",)

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        used = _amp_call(ctx, node)
        if used is None:
            return
        data = module_data(ctx, self)
        if used == "autocast":
            state = autocast_call(ctx, node, None)
            if state is not None and state.active:
                kind = "bf16" if state.effective_dtype == "bfloat16" else "other"
                data.setdefault("autocast", set()).add(kind)
            return
        enabled = next((k.value for k in node.keywords if k.arg == "enabled"), None)
        if enabled is None or (isinstance(enabled, ast.Constant) and enabled.value is True):
            data.setdefault("scalers", []).append(node)

    def leave_scope(self, node: ast.AST, ctx: Context) -> None:
        if not isinstance(node, ast.Module):
            return
        data = module_data(ctx, self)
        if data.get("autocast") == {"bf16"}:
            for scaler in data.get("scalers", ()):
                ctx.report(AMP203, scaler)
