"""AMP5xx: the GradScaler protocol (scale -> backward -> [unscale_ -> clip] -> step -> update).

Layout: each code has one section below (``grep -n AMP503`` lands on it) holding its
:class:`Rule` (metadata, bad and good examples), its autofix examples and the check that emits
it. The six checks share one recording pass: the detector at the end of this file,
:class:`GradScalerProtocol`, records during the engine's single traversal only the calls that
matter (``.backward()``, ``.step``, ``.unscale_``, ``.update``, ``.zero_grad``, ``.get_scale``,
gradient clipping, ``torch.autograd.grad``) as events, each with its control-flow path inside the
current function (or module) body. When the body ends it decides, from all events of that body,
which names are scalers and optimizers, then runs every check on that :class:`_Body` in statement
order. Statement order and branches are answered by :mod:`training_profiler.linter.flow`. It never
reasons across functions.

Which names are GradScalers:
  * bound to a GradScaler construction (``torch.amp.GradScaler("cuda")``, ``GradScaler()`` from
    ``torch.cuda.amp``, ``self.scaler = GradScaler()`` in ``__init__`` used in another method),
    unless ``enabled=False`` is written literally;
  * of unknown binding (a parameter, ``self.x`` set elsewhere, a call to a local factory) and used
    like a scaler in this body: ``X.scale(loss).backward()``, ``torch.autograd.grad(X.scale(..))``,
    ``X.unscale_(...)``, ``X.get_scale()``, or named ``*scaler`` and called as ``X.step(opt)``.
  A name bound to anything else the resolver recognises (another library's class) is not a scaler.
  ``scaler = self.scaler`` is the same scaler as ``self.scaler``.
Which names are optimizers: bound to a ``torch.optim`` class, used as one in this body
(``X.zero_grad()``, ``scaler.step(X)``, ``scaler.unscale_(X)``), or named like one
(``optimizer``, ``opt_d``, ``g_optim``; not ``*sched*``) and stepped with no argument.
``lr_scheduler.step()`` is neither. Calls inside a ``lambda`` are not part of the step.

Control flow: statement order within one body; a ``for``/``while`` body is one training step.
Two events in different arms of one ``if`` (or ``match``, or ``except`` handlers) never see each
other, nor does code after an arm that ends in ``return``/``raise`` (``continue``/``break``
inside the same loop). ``optimizer.step()`` / clipping inside an arm that switches between the
scaler and plain PyTorch (``if scaler is None: ... else: scaler.step(...)``) is not reported.
Rules that need the whole step in view only fire when the body shows the other half too, so a
step split over helper functions stays silent: AMP501 needs a plain ``loss.backward()`` before
``scaler.step`` and no scaled backward anywhere in the body; AMP505 "update missing" needs the
scaled backward (or the scaler's construction) in the body, no call that receives the scaler
(a helper may update it) and, for ``self.scaler``, no ``self.scaler.update()`` in any method of
the class. AMP502 stays silent after ``scaler.unscale_(opt)`` (a deliberate manual step) and
after a later plain ``loss.backward()`` (a second, unscaled training phase).
"""

from __future__ import annotations

import ast
import re
from typing import Iterator

from ...findings import Rule, Severity
from .. import flow
from ..engine import GRADSCALER_NAMES, Context, LintRule, target_key

__all__ = ["GradScalerProtocol", "AMP501", "AMP502", "AMP503", "AMP504", "AMP505", "AMP506"]

_AMP = "https://pytorch.org/docs/stable/amp.html#gradient-scaling"
_EXAMPLES = "https://pytorch.org/docs/stable/notes/amp_examples.html"


# ---------------------------------------------------------------------------------------------
# What every check reads: the events of one body

# Event kinds
_BACKWARD = "backward"  # loss.backward() on an unscaled tensor
_SCALED_BACKWARD = "scaled_backward"  # scaler.scale(loss).backward()
_STEP = "step"  # X.step(...): scaler or optimizer, decided when the body ends
_UPDATE = "update"
_UNSCALE = "unscale_"
_ZERO_GRAD = "zero_grad"
_GET_SCALE = "get_scale"
_CLIP = "clip"
_GRAD = "grad"  # torch.autograd.grad(create_graph=True) on an unscaled output
_SCALED_GRAD = "scaled_grad"


class _Event:
    """One recorded call, a :class:`flow.Site`. ``key``: the receiver (scaler / optimizer) as
    ``x`` or ``self.x``; ``arg``: the optimizer argument of ``scaler.step/unscale_``; ``path``:
    the control-flow arms around the call (:func:`flow.path_to`); ``index``: its position in the
    body's statement order."""

    __slots__ = ("kind", "node", "key", "arg", "path", "index", "origin", "stmt")

    def __init__(self, kind, node, key, arg, path, index, origin, stmt):
        self.kind = kind
        self.node = node
        self.key = key
        self.arg = arg
        self.path = path
        self.index = index
        self.origin = origin  # "scaler" / "local scaler" / "disabled" / "optimizer" / "other" / None (unknown)
        self.stmt = stmt  # the statement when the call is the whole statement (for autofixes)


class _Body:
    """The events of one function (or module) body, with the names decided to be scalers and
    optimizers. Checks report through ``ctx``; AMP505 on ``self.<scaler>`` goes to ``deferred``
    (another method of the class may update it: decided at the end of the file)."""

    def __init__(self, ctx: Context, events: list[_Event], scalers: set[str], optimizers: set[str], stmts: list):
        self.ctx = ctx
        self.events = events
        self.scalers = scalers
        self.optimizers = optimizers
        self.stmts = stmts  # the body's statements
        self.deferred: list[tuple] = []  # (self key, node, report kwargs)
        self.scaled = [e for e in events if e.kind == _SCALED_BACKWARD and e.key in scalers]
        self.scaler_events = [
            e for e in events if e.key in scalers and e.kind in (_SCALED_BACKWARD, _STEP, _UPDATE, _UNSCALE)
        ]

    def of(self, kind: str, key: str | None = None) -> list[_Event]:
        return [e for e in self.events if e.kind == kind and (key is None or e.key == key)]


def _between(body: _Body, start: _Event, end: _Event, kind: str, key: str, arg: str | None = None) -> bool:
    """An event of ``kind`` on ``key`` (with optimizer ``arg``) lies between ``start`` and ``end``."""
    return flow.between(start, end, (e for e in body.of(kind, key) if arg is None or e.arg == arg))


def _rebackward(body: _Body, source: _Event, end: _Event) -> bool:
    """A plain backward runs after the scaled one, before ``end``: the gradients ``end`` sees
    come from an unscaled step (e.g. a second training phase without AMP)."""
    return any(flow.precedes(source, e) and e.index < end.index for e in body.of(_BACKWARD))


def _switched(body: _Body, event: _Event, source: _Event, scaler: str) -> bool:
    """``event`` lies in a branch that chooses between the scaler and plain PyTorch: an ``if``
    (not around ``source``) whose test names the scaler or whose other arm uses it."""
    for arm in flow.arms_apart(event, source):
        if isinstance(arm.stmt, ast.If) and any(target_key(name) == scaler for name in _names(arm.stmt.test)):
            return True
        if any(flow.in_other_arm(other, arm) for other in body.scaler_events):
            return True
    return False


def _hands_over(stmts: list[ast.stmt], key: str) -> bool:
    """Some call in ``stmts`` receives the scaler as an argument (a helper may call update())."""
    stack: list[ast.AST] = list(stmts)
    while stack:
        cur = stack.pop()
        if isinstance(cur, ast.Call):
            for arg in [*cur.args, *(kw.value for kw in cur.keywords)]:
                if target_key(arg.value if isinstance(arg, ast.Starred) else arg) == key:
                    return True
        if not isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(cur))
    return False


# A standard loop used by several good examples (the AMP examples page, with clipping).
_STANDARD_LOOP = (
    "import torch\n"
    "\n"
    "def train(model, loader, optimizer, max_norm=1.0):\n"
    "    scaler = torch.amp.GradScaler(\"cuda\")\n"
    "    for x, y in loader:\n"
    "        optimizer.zero_grad()\n"
    "        with torch.autocast(\"cuda\", dtype=torch.float16):\n"
    "            loss = model(x, y)\n"
    "        scaler.scale(loss).backward()\n"
    "        scaler.unscale_(optimizer)\n"
    "        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n"
    "        scaler.step(optimizer)\n"
    "        scaler.update()\n"
)


# ---------------------------------------------------------------------------------------------
# AMP501 scaler-step-without-scaled-backward

AMP501 = Rule(
    code="AMP501",
    name="scaler-step-without-scaled-backward",
    severity=Severity.ERROR,
    message="{scaler}.step() after an unscaled loss.backward() divides every update by the loss scale: call {scaler}.scale(loss).backward()",
    why=(
        "scaler.step(optimizer) unscales the gradients (divides them by the current scale, 65536 "
        "at start) before calling optimizer.step(). If the backward pass ran on the unscaled loss, "
        "the gradients were never multiplied, so every update is 65536x too small and the model "
        "silently stops learning; fp16 gradients also underflow to zero."
    ),
    fix="Call scaler.scale(loss).backward() instead of loss.backward() whenever the step goes through scaler.step(optimizer).",
    references=(
        f"{_EXAMPLES}#typical-mixed-precision-training",
        _AMP,
    ),
    bad=(
        "import torch\n"
        "\n"
        "scaler = torch.amp.GradScaler(\"cuda\")\n"
        "\n"
        "def train_step(model, optimizer, batch):\n"
        "    with torch.autocast(\"cuda\"):\n"
        "        loss = model(batch).mean()\n"
        "    loss.backward()\n"
        "    scaler.step(optimizer)  # expect: AMP501\n"
        "    scaler.update()\n",
        "from torch.cuda.amp import GradScaler\n"
        "\n"
        "class Trainer:\n"
        "    def __init__(self, model, optimizer):\n"
        "        self.model = model\n"
        "        self.optimizer = optimizer\n"
        "        self.scaler = GradScaler()\n"
        "\n"
        "    def train_step(self, batch):\n"
        "        loss = self.model(batch)\n"
        "        loss.backward()\n"
        "        self.scaler.step(self.optimizer)  # expect: AMP501\n"
        "        self.scaler.update()\n",
        "def train(model, loader, optimizer, scaler):\n"
        "    for x, y in loader:\n"
        "        optimizer.zero_grad()\n"
        "        loss = model(x, y)\n"
        "        loss.backward()\n"
        "        scaler.step(optimizer)  # expect: AMP501\n"
        "        scaler.update()\n",
    ),
    good=(
        _STANDARD_LOOP,
        "def optimizer_step(scaler, optimizer):\n"
        "    scaler.step(optimizer)  # the scaled backward ran in the caller\n"
        "    scaler.update()\n",
        "def train_step(model, optimizer, loss, scaler=None):\n"
        "    if scaler is None:\n"
        "        loss.backward()\n"
        "        optimizer.step()\n"
        "    else:\n"
        "        scaler.scale(loss).backward()\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n",
    ),
)


def _amp501_step_without_scaled_backward(body: _Body) -> None:
    """AMP501: ``scaler.step`` after a plain ``loss.backward()``, when nothing in the body is scaled."""
    if any(e.kind in (_SCALED_BACKWARD, _SCALED_GRAD) for e in body.events):
        return
    plain = body.of(_BACKWARD)
    for step in body.of(_STEP):
        if step.key in body.scalers and any(flow.precedes(b, step) for b in plain):
            body.ctx.report(AMP501, step.node, scaler=step.key)


# ---------------------------------------------------------------------------------------------
# AMP502 optimizer-step-bypasses-scaler

AMP502 = Rule(
    code="AMP502",
    name="optimizer-step-bypasses-scaler",
    severity=Severity.ERROR,
    message="{optimizer}.step() after {scaler}.scale(loss).backward() {detail}: call {scaler}.step({optimizer}) instead",
    why=(
        "After scaler.scale(loss).backward() every gradient is multiplied by the loss scale (65536 "
        "at start). Calling optimizer.step() directly applies those gradients as they are: updates "
        "are 65536x too large, steps with inf/NaN gradients are not skipped, and the scale is never "
        "adjusted. scaler.step(optimizer) unscales first and skips the step when gradients overflowed; "
        "calling optimizer.step() after it steps a second time, inf/NaN gradients included."
    ),
    fix="Replace optimizer.step() with scaler.step(optimizer), followed by scaler.update() once per iteration.",
    references=(
        f"{_EXAMPLES}#typical-mixed-precision-training",
        _AMP,
    ),
    bad=(
        "import torch\n"
        "\n"
        "def train(model, loader, optimizer):\n"
        "    scaler = torch.amp.GradScaler(\"cuda\")\n"
        "    for x, y in loader:\n"
        "        optimizer.zero_grad()\n"
        "        with torch.autocast(\"cuda\", dtype=torch.float16):\n"
        "            loss = model(x, y)\n"
        "        scaler.scale(loss).backward()\n"
        "        optimizer.step()  # expect: AMP502\n"
        "        scaler.update()\n",
        "import torch\n"
        "from torch import optim\n"
        "\n"
        "class Trainer:\n"
        "    def __init__(self, model):\n"
        "        self.optimizer = optim.AdamW(model.parameters(), lr=1e-4)\n"
        "        self.scaler = torch.cuda.amp.GradScaler()\n"
        "\n"
        "    def fit(self, losses, accum=4):\n"
        "        for i, loss in enumerate(losses):\n"
        "            self.scaler.scale(loss / accum).backward()\n"
        "            if (i + 1) % accum == 0:\n"
        "                self.optimizer.step()  # expect: AMP502\n"
        "                self.optimizer.zero_grad()\n",
        "def gan_step(scaler, loss_d, loss_g, opt_d, opt_g):\n"
        "    opt_d.zero_grad()\n"
        "    scaler.scale(loss_d).backward()\n"
        "    opt_d.step()  # expect: AMP502\n"
        "    opt_g.zero_grad()\n"
        "    scaler.scale(loss_g).backward()\n"
        "    scaler.step(opt_g)\n"
        "    scaler.update()\n",
        "def train_one_epoch(model, loader, optimizer, use_amp, scaler=None):\n"
        "    for x, y in loader:\n"
        "        optimizer.zero_grad()\n"
        "        if use_amp:\n"
        "            scaler.scale(model(x, y)).backward()\n"
        "            scaler.step(optimizer)\n"
        "            scaler.update()\n"
        "        else:\n"
        "            model(x, y).backward()\n"
        "        optimizer.step()  # expect: AMP502\n",
    ),
    good=(
        _STANDARD_LOOP,
        "def train_step(loss, optimizer, scheduler, scaler):\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n"
        "    scheduler.step()  # a scheduler is not an optimizer\n",
        "def train_step(loss, optimizer, scaler, use_amp):\n"
        "    if use_amp:\n"
        "        scaler.scale(loss).backward()\n"
        "    else:\n"
        "        loss.backward()\n"
        "    if use_amp:\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n"
        "    else:\n"
        "        optimizer.step()\n",
    ),
)

_AMP502_AUTOFIX = (
    (
        "def train(loader, optimizer, scaler):\n"
        "    for loss in loader:\n"
        "        scaler.scale(loss).backward()\n"
        "        optimizer.step()\n"
        "        scaler.update()\n",
        "def train(loader, optimizer, scaler):\n"
        "    for loss in loader:\n"
        "        scaler.scale(loss).backward()\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n",
    ),
    (
        "def fit(self, losses, accum=4):\n"
        "    for i, loss in enumerate(losses):\n"
        "        self.scaler.scale(loss / accum).backward()\n"
        "        if (i + 1) % accum == 0:\n"
        "            self.optimizer.step()  # apply\n"
        "            self.optimizer.zero_grad()\n",
        "def fit(self, losses, accum=4):\n"
        "    for i, loss in enumerate(losses):\n"
        "        self.scaler.scale(loss / accum).backward()\n"
        "        if (i + 1) % accum == 0:\n"
        "            self.scaler.step(self.optimizer)  # apply\n"
        "            self.scaler.update()\n"
        "            self.optimizer.zero_grad()\n",
    ),
)


def _amp502_optimizer_step_bypasses_scaler(body: _Body) -> None:
    """AMP502: ``optimizer.step()`` after ``scaler.scale(loss).backward()`` (or after the scaler's step)."""
    for step in body.of(_STEP):
        if step.key not in body.optimizers:
            continue
        for source in body.scaled:
            if not flow.precedes(source, step):
                continue
            scaler, opt = source.key, step.key
            if _switched(body, step, source, scaler) or _rebackward(body, source, step):
                continue
            if _between(body, source, step, _STEP, scaler, opt):
                detail, data = "steps a second time after the scaler's step, inf/NaN gradients included", None
            elif _between(body, source, step, _UNSCALE, scaler, opt):
                continue  # unscaled by hand: a deliberate manual step
            else:
                detail = "applies gradients multiplied by the loss scale and never skips inf/NaN steps"
                data = _amp502_fix(body, step, scaler)
            body.ctx.report(
                AMP502, step.node, fixable=data is not None, data=data, optimizer=opt, scaler=scaler, detail=detail
            )
            break


def _amp502_fix(body: _Body, step: _Event, scaler: str) -> dict | None:
    """AMP502 autofix: replace ``opt.step()`` by ``scaler.step(opt)``; add ``scaler.update()``
    when the body has none."""
    if step.node.args or step.node.keywords or step.stmt is None or len({e.key for e in body.scaled}) != 1:
        return None
    data = {"fix_replace": f"{scaler}.step({step.key})"}
    updates = body.of(_UPDATE, scaler)
    if not updates:
        data["fix_after"] = f"{scaler}.update()"
    elif not any(u.index > step.index for u in updates):
        return None
    return data


# ---------------------------------------------------------------------------------------------
# AMP503 clip-scaled-gradients

AMP503 = Rule(
    code="AMP503",
    name="clip-scaled-gradients",
    severity=Severity.ERROR,
    message="{name}() clips gradients that are still multiplied by the loss scale: call {scaler}.unscale_(optimizer) before clipping",
    why=(
        "After scaler.scale(loss).backward() the gradients are multiplied by the loss scale, so a "
        "max_norm of 1.0 is compared with a norm 65536x too large: clipping always triggers and, "
        "once scaler.step() unscales, the update is shrunk by the scale. scaler.unscale_(optimizer) "
        "divides the gradients in place first; scaler.step() then knows not to unscale again."
    ),
    fix="Call scaler.unscale_(optimizer) between scaler.scale(loss).backward() and the clip call (once per optimizer per step).",
    references=(
        f"{_EXAMPLES}#gradient-clipping",
        "https://pytorch.org/docs/stable/generated/torch.nn.utils.clip_grad_norm_.html",
    ),
    bad=(
        "import torch\n"
        "\n"
        "def train(model, loader, optimizer, scaler):\n"
        "    for x, y in loader:\n"
        "        optimizer.zero_grad()\n"
        "        scaler.scale(model(x, y)).backward()\n"
        "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # expect: AMP503\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n",
        "from torch.nn.utils import clip_grad_value_\n"
        "\n"
        "def fit(model, losses, optimizer, scaler, accum=4):\n"
        "    for i, loss in enumerate(losses):\n"
        "        scaler.scale(loss / accum).backward()\n"
        "        if (i + 1) % accum == 0:\n"
        "            clip_grad_value_(model.parameters(), 0.5)  # expect: AMP503\n"
        "            scaler.step(optimizer)\n"
        "            scaler.update()\n"
        "            optimizer.zero_grad()\n",
        "from torch import nn\n"
        "\n"
        "def train_step(model, loss, optimizer, scaler=None):\n"
        "    if scaler is not None:\n"
        "        scaler.scale(loss).backward()\n"
        "    else:\n"
        "        loss.backward()\n"
        "    nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # expect: AMP503\n"
        "    if scaler is not None:\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n"
        "    else:\n"
        "        optimizer.step()\n",
    ),
    good=(
        _STANDARD_LOOP,
        "from torch.nn.utils import clip_grad_norm_\n"
        "\n"
        "def fit(model, losses, optimizer, scaler, accum=4):\n"
        "    for i, loss in enumerate(losses):\n"
        "        scaler.scale(loss / accum).backward()\n"
        "        if (i + 1) % accum == 0:\n"
        "            scaler.unscale_(optimizer)\n"
        "            clip_grad_norm_(model.parameters(), 1.0)\n"
        "            scaler.step(optimizer)\n"
        "            scaler.update()\n"
        "            optimizer.zero_grad()\n",
        "import torch\n"
        "\n"
        "def train_step(model, loss, optimizer, scaler=None):\n"
        "    if scaler is not None:\n"
        "        scaler.scale(loss).backward()\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n"
        "    else:\n"
        "        loss.backward()\n"
        "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "        optimizer.step()\n",
    ),
)

_AMP503_AUTOFIX = (
    (
        "import torch\n"
        "\n"
        "def train(model, loader, optimizer, scaler):\n"
        "    for x, y in loader:\n"
        "        scaler.scale(model(x, y)).backward()\n"
        "        # clip\n"
        "        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n",
        "import torch\n"
        "\n"
        "def train(model, loader, optimizer, scaler):\n"
        "    for x, y in loader:\n"
        "        scaler.scale(model(x, y)).backward()\n"
        "        # clip\n"
        "        scaler.unscale_(optimizer)\n"
        "        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n",
    ),
)


def _amp503_clip_before_unscale(body: _Body) -> None:
    """AMP503: gradient clipping after the scaled backward with no ``scaler.unscale_`` in between."""
    for clip in body.of(_CLIP):
        for source in body.scaled:
            if not flow.precedes(source, clip):
                continue
            scaler = source.key
            if (
                _between(body, source, clip, _UNSCALE, scaler)
                or _between(body, source, clip, _STEP, scaler)
                or _switched(body, clip, source, scaler)
                or _rebackward(body, source, clip)
            ):
                continue
            name = getattr(clip.node.func, "attr", None) or getattr(clip.node.func, "id", "clip_grad_norm_")
            data = _amp503_fix(body, clip, scaler)
            body.ctx.report(AMP503, clip.node, fixable=data is not None, data=data, name=name, scaler=scaler)
            break


def _amp503_fix(body: _Body, clip: _Event, scaler: str) -> dict | None:
    """AMP503 autofix: insert ``scaler.unscale_(opt)`` before the clip when one optimizer is
    stepped after it (``scaler.step(opt)`` or a direct ``opt.step()``), in the same block, and the
    body never unscales."""
    if clip.stmt is None or body.of(_UNSCALE, scaler):
        return None
    stepped = [
        (s.arg if s.key == scaler else s.key, s)
        for s in body.of(_STEP)
        if s.index > clip.index and ((s.key == scaler and s.arg is not None) or s.key in body.optimizers)
    ]
    if len({opt for opt, _ in stepped}) != 1 or any(s.path != clip.path for _, s in stepped):
        return None
    return {"fix_before": f"{scaler}.unscale_({stepped[0][0]})"}


# ---------------------------------------------------------------------------------------------
# AMP504 unscale-twice-or-late

AMP504 = Rule(
    code="AMP504",
    name="unscale-twice-or-late",
    severity=Severity.ERROR,
    message="{scaler}.unscale_() {detail}: call it once per optimizer per step, after backward and before {scaler}.step(optimizer)",
    why=(
        "GradScaler records per optimizer that its gradients were unscaled; a second unscale_() "
        "before update() raises RuntimeError, and unscale_() after step() raises too. After "
        "update() it silently marks the next step's gradients as already unscaled, so the next "
        "scaler.step() applies gradients still multiplied by the scale. Inside a gradient "
        "accumulation loop the second micro-batch calls it again."
    ),
    fix="Call scaler.unscale_(optimizer) exactly once, after the last backward of the step and before clipping and scaler.step(optimizer).",
    references=(
        f"{_EXAMPLES}#gradient-clipping",
        f"{_EXAMPLES}#gradient-accumulation",
        "https://pytorch.org/docs/stable/amp.html#torch.amp.GradScaler.unscale_",
    ),
    bad=(
        "import torch\n"
        "\n"
        "def train_step(model, loss, optimizer, scaler):\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.unscale_(optimizer)\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "    scaler.unscale_(optimizer)  # expect: AMP504\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n",
        "import torch\n"
        "\n"
        "def train_step(model, loss, optimizer, scaler):\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n"
        "    scaler.unscale_(optimizer)  # expect: AMP504\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n",
        "import torch\n"
        "\n"
        "def train_step(model, micro_batches, optimizer):\n"
        "    scaler = torch.amp.GradScaler(\"cuda\")\n"
        "    for x in micro_batches:\n"
        "        scaler.scale(model(x)).backward()\n"
        "        scaler.unscale_(optimizer)  # expect: AMP504\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n",
    ),
    good=(
        _STANDARD_LOOP,
        "import torch\n"
        "\n"
        "def train_step(models, loss0, loss1, opt0, opt1, scaler):\n"
        "    scaler.scale(loss0).backward(retain_graph=True)\n"
        "    scaler.scale(loss1).backward()\n"
        "    scaler.unscale_(opt0)\n"
        "    torch.nn.utils.clip_grad_norm_(models[0].parameters(), 1.0)\n"
        "    scaler.step(opt0)\n"
        "    scaler.unscale_(opt1)\n"
        "    torch.nn.utils.clip_grad_norm_(models[1].parameters(), 1.0)\n"
        "    scaler.step(opt1)\n"
        "    scaler.update()\n",
        "import torch\n"
        "\n"
        "def two_steps(model, loss_a, loss_b, optimizer, scaler):\n"
        "    for loss in (loss_a, loss_b):\n"
        "        scaler.scale(loss).backward()\n"
        "        scaler.unscale_(optimizer)\n"
        "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n"
        "        optimizer.zero_grad()\n",
    ),
)

_AMP504_AUTOFIX = (
    (
        "import torch\n"
        "\n"
        "def train_step(model, loss, optimizer, scaler):\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.unscale_(optimizer)\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "    scaler.unscale_(optimizer)\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n",
        "import torch\n"
        "\n"
        "def train_step(model, loss, optimizer, scaler):\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.unscale_(optimizer)\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n",
    ),
)


def _amp504_unscale_twice_or_late(body: _Body) -> None:
    """AMP504: ``scaler.unscale_(opt)`` twice before ``update()``, after ``step()``, or in a loop
    that never updates the scaler."""
    for unscale in body.of(_UNSCALE):
        scaler, opt = unscale.key, unscale.arg
        if scaler not in body.scalers:
            continue
        detail, data = None, None
        for earlier in body.of(_UNSCALE, scaler):
            if earlier.arg == opt and flow.precedes(earlier, unscale) and not _between(body, earlier, unscale, _UPDATE, scaler):
                detail = f"is called twice for the same optimizer before {scaler}.update()"
                if unscale.stmt is not None and earlier.path == unscale.path:
                    data = {"fix_remove": True}  # AMP504 autofix: the first call always ran, the second only raises
                break
        if detail is None:
            for step in body.of(_STEP, scaler):
                if (
                    step.arg == opt
                    and flow.precedes(step, unscale)
                    and not _between(body, step, unscale, _SCALED_BACKWARD, scaler)
                ):
                    detail = f"comes after {scaler}.step(), too late for this step"
                    break
        if detail is None and _amp504_loop_without_update(body, unscale):
            detail = f"runs again on every iteration of a loop that never calls {scaler}.update()"
        if detail is not None:
            body.ctx.report(AMP504, unscale.node, fixable=data is not None, data=data, detail=detail, scaler=scaler)


def _amp504_loop_without_update(body: _Body, event: _Event) -> bool:
    """``event`` is in a loop that neither updates the scaler nor hands it to a helper, while
    the body steps or updates it after the loop (so the loop is not the whole step)."""
    loop = next(flow.loops_around(event), None)  # the innermost loop decides
    if loop is None:
        return False
    scaler = event.key
    inside = [e for e in body.events if e.key == scaler and flow.inside(e, loop)]
    after = [
        e for e in body.events
        if e.key == scaler and e.kind in (_STEP, _UPDATE) and e.index > event.index and e not in inside
    ]
    return bool(after) and not any(e.kind == _UPDATE for e in inside) and not _hands_over(loop.body, scaler)


# ---------------------------------------------------------------------------------------------
# AMP505 scaler-update-missing-or-early

AMP505 = Rule(
    code="AMP505",
    name="scaler-update-missing-or-early",
    severity=Severity.ERROR,
    message="{scaler}.update() {detail}: call it once per iteration, after the last {scaler}.step()",
    why=(
        "scaler.update() adjusts the loss scale from the inf checks that step() recorded. Without "
        "it the scale never shrinks after an overflow, so every later step is skipped, and a "
        "second step() before update() raises RuntimeError. update() before any step() of the "
        "iteration has no inf checks to use and raises AssertionError."
    ),
    fix="Call scaler.update() once per iteration, after scaler.step() for every optimizer of that iteration.",
    references=(
        f"{_EXAMPLES}#typical-mixed-precision-training",
        f"{_EXAMPLES}#working-with-multiple-models-losses-and-optimizers",
        "https://pytorch.org/docs/stable/amp.html#torch.amp.GradScaler.update",
    ),
    bad=(
        "import torch\n"
        "\n"
        "def train(model, loader, optimizer):\n"
        "    scaler = torch.amp.GradScaler(\"cuda\")\n"
        "    for x, y in loader:\n"
        "        optimizer.zero_grad()\n"
        "        scaler.scale(model(x, y)).backward()\n"
        "        scaler.step(optimizer)  # expect: AMP505\n",
        "def train_step(loss, optimizer, scaler):\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.update()  # expect: AMP505\n"
        "    scaler.step(optimizer)\n",
        "def train_epoch(model, loader, optimizer, scaler):\n"
        "    for x, y in loader:\n"
        "        scaler.scale(model(x, y)).backward()\n"
        "        scaler.step(optimizer)  # expect: AMP505\n"
        "        optimizer.zero_grad()\n"
        "    scaler.update()\n",
    ),
    good=(
        _STANDARD_LOOP,
        "def train_step(loss0, loss1, opt0, opt1, scaler):\n"
        "    scaler.scale(loss0 + loss1).backward()\n"
        "    for opt in (opt0, opt1):\n"
        "        scaler.step(opt)\n"
        "    scaler.update()\n",
        "def optimizer_step(scaler, optimizer):\n"
        "    scaler.unscale_(optimizer)\n"
        "    scaler.step(optimizer)  # the caller runs backward and update()\n",
    ),
)

_AMP505_AUTOFIX = (
    (
        "def train(model, loader, opt0, opt1, scaler):\n"
        "    for x, y in loader:\n"
        "        scaler.scale(model(x, y)).backward()\n"
        "        scaler.step(opt0)\n"
        "        scaler.step(opt1)\n"
        "        opt0.zero_grad()\n",
        "def train(model, loader, opt0, opt1, scaler):\n"
        "    for x, y in loader:\n"
        "        scaler.scale(model(x, y)).backward()\n"
        "        scaler.step(opt0)\n"
        "        scaler.step(opt1)\n"
        "        scaler.update()\n"
        "        opt0.zero_grad()\n",
    ),
)


def _amp505_update_missing_or_early(body: _Body) -> None:
    """AMP505: ``scaler.update()`` before the step, missing from the body that owns the step, or
    missing from the loop that runs backward and step."""
    for scaler in sorted(body.scalers):
        steps = body.of(_STEP, scaler)
        updates = body.of(_UPDATE, scaler)
        for update in updates:
            if not any(flow.precedes(s, update) for s in steps) and any(flow.precedes(update, s) for s in steps):
                detail = f"runs before {scaler}.step() in the same iteration"
                body.ctx.report(AMP505, update.node, detail=detail, scaler=scaler)
        owned = any(e.key == scaler for e in body.scaled) or any(e.origin == "local scaler" for e in steps)
        if not steps or not owned:
            continue
        if not updates:
            if not _hands_over(body.stmts, scaler):
                data = _amp505_fix(steps, scaler)
                detail = f"is missing after {scaler}.step() in this function"
                kwargs = dict(fixable=data is not None, data=data, detail=detail, scaler=scaler)
                if scaler.startswith("self."):
                    body.deferred.append((scaler, steps[-1].node, kwargs))
                else:
                    body.ctx.report(AMP505, steps[-1].node, **kwargs)
            continue
        for step in steps:
            if _amp505_stepping_loop_without_update(body, step):
                detail = f"is missing from the loop that calls {scaler}.step()"
                body.ctx.report(AMP505, step.node, detail=detail, scaler=scaler)


def _amp505_fix(steps: list[_Event], scaler: str) -> dict | None:
    """AMP505 autofix: ``scaler.update()`` after the last step, when every step is in one block."""
    last = steps[-1]
    if last.stmt is None or any(s.path != last.path for s in steps):
        return None
    return {"fix_after": f"{scaler}.update()"}


def _amp505_stepping_loop_without_update(body: _Body, step: _Event) -> bool:
    """``step`` is in the innermost loop that also runs the scaled backward, with no update."""
    scaler = step.key
    for loop in flow.loops_around(step):
        inside = [e for e in body.events if e.key == scaler and flow.inside(e, loop)]
        if not any(e.kind == _SCALED_BACKWARD for e in inside):
            continue  # `for opt in optimizers: scaler.step(opt)`: look further out
        return not any(e.kind == _UPDATE for e in inside) and not _hands_over(loop.body, scaler)
    return False


def _amp505_report_deferred(ctx: Context, deferred: list[tuple], self_updates: set[tuple]) -> None:
    """End of file: a ``self.<scaler>`` stepped without update is reported only when no method of
    its class calls ``self.<scaler>.update()``. Entries are ``((class id, key), node, kwargs)``."""
    for owner_key, step_node, kwargs in deferred:
        if owner_key not in self_updates:
            ctx.report(AMP505, step_node, **kwargs)


# ---------------------------------------------------------------------------------------------
# AMP506 grad-penalty-unscaled

AMP506 = Rule(
    code="AMP506",
    name="grad-penalty-unscaled",
    severity=Severity.WARNING,
    message="torch.autograd.grad(create_graph=True) on an unscaled loss while {scaler} scales the backward: pass {scaler}.scale(loss) and multiply the gradients by 1 / {scaler}.get_scale()",
    why=(
        "A gradient penalty differentiates the loss out of place. Under float16 autocast its "
        "gradients underflow exactly like the main backward unless the loss is scaled; the "
        "penalty then silently becomes zero. The AMP recipe scales the outputs passed to "
        "autograd.grad and unscales the resulting gradients before computing the penalty."
    ),
    fix="grads = torch.autograd.grad(scaler.scale(loss), params, create_graph=True); inv_scale = 1.0 / scaler.get_scale(); grads = [g * inv_scale for g in grads].",
    references=(f"{_EXAMPLES}#gradient-penalty",),
    bad=(
        "import torch\n"
        "\n"
        "def train_step(model, x, y, optimizer, scaler):\n"
        "    with torch.autocast(\"cuda\"):\n"
        "        loss = model(x, y)\n"
        "    grads = torch.autograd.grad(loss, model.parameters(), create_graph=True)  # expect: AMP506\n"
        "    with torch.autocast(\"cuda\"):\n"
        "        loss = loss + sum(g.pow(2).sum() for g in grads).sqrt()\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n",
        "from torch import autograd\n"
        "\n"
        "def d_step(disc, real, loss_d, opt_d, scaler):\n"
        "    real.requires_grad_(True)\n"
        "    pred = disc(real)\n"
        "    grad_real, = autograd.grad(outputs=pred.sum(), inputs=real, create_graph=True)  # expect: AMP506\n"
        "    loss_d = loss_d + grad_real.pow(2).sum()\n"
        "    scaler.scale(loss_d).backward()\n"
        "    scaler.step(opt_d)\n"
        "    scaler.update()\n",
    ),
    good=(
        "import torch\n"
        "\n"
        "def train_step(model, x, y, optimizer, scaler):\n"
        "    with torch.autocast(\"cuda\"):\n"
        "        loss = model(x, y)\n"
        "    scaled_grads = torch.autograd.grad(scaler.scale(loss), model.parameters(), create_graph=True)\n"
        "    inv_scale = 1.0 / scaler.get_scale()\n"
        "    grads = [g * inv_scale for g in scaled_grads]\n"
        "    with torch.autocast(\"cuda\"):\n"
        "        loss = loss + sum(g.pow(2).sum() for g in grads).sqrt()\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n",
        "import torch\n"
        "\n"
        "def penalty(model, loss):  # no GradScaler in this function\n"
        "    grads = torch.autograd.grad(loss, model.parameters(), create_graph=True)\n"
        "    return sum(g.pow(2).sum() for g in grads)\n",
        "import torch\n"
        "\n"
        "def adversarial_step(model, x, y, optimizer, scaler):\n"
        "    x.requires_grad_(True)\n"
        "    grad_x, = torch.autograd.grad(model(x, y), x)  # input gradient, no double backward\n"
        "    loss = model(x + 0.01 * grad_x.sign(), y)\n"
        "    scaler.scale(loss).backward()\n"
        "    scaler.step(optimizer)\n"
        "    scaler.update()\n",
    ),
)


def _amp506_unscaled_grad_penalty(body: _Body) -> None:
    """AMP506: ``torch.autograd.grad(create_graph=True)`` on an unscaled output in a body that scales."""
    in_use = [e.key for e in body.events if e.key in body.scalers and e.kind in (_SCALED_BACKWARD, _SCALED_GRAD, _STEP)]
    if not in_use:
        return
    for grad in body.of(_GRAD):
        body.ctx.report(AMP506, grad.node, scaler=in_use[0])


# ---------------------------------------------------------------------------------------------
# Recording: which calls are events, which names are scalers and optimizers

_SCALER_CLASSES = GRADSCALER_NAMES | {
    "torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler",
}
_CLIP_FUNCTIONS = {
    f"torch.nn.utils{mod}.{name}"
    for mod in ("", ".clip_grad")
    for name in ("clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "clip_grads_with_norm_")
}
_CLIP_NAMES = {name.rsplit(".", 1)[1] for name in _CLIP_FUNCTIONS}
_AUTOGRAD_GRAD = "torch.autograd.grad"
_AUTOGRAD_BACKWARD = "torch.autograd.backward"
# Attribute names worth a look in visit_Call; everything else returns after one set lookup.
_WATCHED_ATTRS = frozenset({"backward", "step", "update", "unscale_", "zero_grad", "get_scale", "grad", *_CLIP_NAMES})
_WATCHED_NAMES = frozenset({"backward", "grad", *_CLIP_NAMES})  # bare imported functions
_SCALE_METHODS = ("scale", "get_scale")
_USAGE_EVIDENCE = (_SCALED_BACKWARD, _SCALED_GRAD, _UNSCALE, _GET_SCALE)


def _classify(node: ast.Call, attr: str, ctx: Context) -> tuple | None:
    """(kind, key, arg) for a call that matters to the protocol, else None."""
    func = node.func
    receiver = target_key(func.value) if isinstance(func, ast.Attribute) else None
    if attr == "backward":
        if ctx.qualname(func) == _AUTOGRAD_BACKWARD:
            tensors = _argument(node, 0, "tensors")
        elif isinstance(func, ast.Attribute) and not node.args:
            tensors = func.value  # loss.backward(); `accelerator.backward(loss)` is not ours
        else:
            return None
        scaler = _scaled_by(ctx, tensors)
        return (_SCALED_BACKWARD, scaler, None) if scaler else (_BACKWARD, None, None)
    if attr in _CLIP_NAMES:
        return (_CLIP, None, None) if ctx.qualname(func) in _CLIP_FUNCTIONS else None
    if attr == "grad":
        if ctx.qualname(func) != _AUTOGRAD_GRAD:
            return None
        scaler = _scaled_by(ctx, _argument(node, 0, "outputs"))
        if scaler:
            return (_SCALED_GRAD, scaler, None)
        create_graph = _argument(node, 4, "create_graph")
        return None if create_graph is None or _is_false(create_graph) else (_GRAD, None, None)
    if receiver is None:
        return None
    if attr == "step":
        return (_STEP, receiver, _expr_key(_argument(node, 0, "optimizer")))
    if attr == "unscale_":
        return (_UNSCALE, receiver, _expr_key(_argument(node, 0, "optimizer")))
    if attr == "update":
        return (_UPDATE, receiver, None)
    if attr == "zero_grad":
        return (_ZERO_GRAD, receiver, None)
    if attr == "get_scale":
        return (_GET_SCALE, receiver, None)
    return None


def _small_walk(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of one expression, not descending into lambdas / comprehensions' scopes."""
    stack = [node]
    while stack:
        cur = stack.pop()
        yield cur
        if not isinstance(cur, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(cur))


def _names(expr: ast.AST) -> Iterator[ast.AST]:
    for sub in _small_walk(expr):
        if isinstance(sub, (ast.Name, ast.Attribute)):
            yield sub


def _scaled_by(ctx: Context, expr: ast.AST | None) -> str | None:
    """The scaler key if ``expr`` is (or names a value built from) ``K.scale(...)`` or
    ``... * K.get_scale()``; None otherwise."""
    if expr is None:
        return None
    key = _scale_call_in(expr)
    if key is None:
        for name in _names(expr):  # `scaled = scaler.scale(loss)` ... `scaled.backward()`
            value = ctx.value_of(name) if target_key(name) else None
            key = _scale_call_in(value) if value is not None else None
            if key is not None:
                break
    return key


def _scale_call_in(expr: ast.AST) -> str | None:
    for sub in _small_walk(expr):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr in _SCALE_METHODS:
            key = target_key(sub.func.value)
            if key is not None:
                return key
    return None


def _canonical(ctx: Context, key: str | None) -> str | None:
    """``scaler = self.scaler`` makes ``scaler`` another name for ``self.scaler``."""
    if key is None:
        return None
    binding = ctx.lookup(key)
    alias = target_key(binding.value) if binding is not None and binding.value is not None else None
    return alias or key


def _argument(call: ast.Call, position: int, keyword: str) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    if len(call.args) > position and not any(isinstance(a, ast.Starred) for a in call.args[: position + 1]):
        return call.args[position]
    return None


def _expr_key(node: ast.AST | None) -> str | None:
    if node is None:
        return None
    return target_key(node) or ast.unparse(node)


def _is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value in (False, None)


def _origin(ctx: Context, key: str) -> str | None:
    """What ``key`` was bound to: a GradScaler, a disabled one, a torch optimizer, something else
    the resolver knows (another library's object), or None (unknown: parameter, local factory)."""
    binding = ctx.lookup(key)
    value = binding.value if binding is not None else None
    if value is None:
        return None
    candidates = [value]
    if isinstance(value, ast.IfExp):  # `GradScaler() if amp else None`
        candidates = [value.body, value.orelse]
    elif isinstance(value, ast.BoolOp):
        candidates = list(value.values)
    unknown = False
    for cand in candidates:
        if isinstance(cand, ast.Constant) and cand.value is None:
            continue
        if not isinstance(cand, ast.Call):
            unknown = unknown or not isinstance(cand, (ast.Constant, ast.Dict, ast.List, ast.Tuple, ast.Set))
            continue
        name = ctx.call_name(cand)
        if name in _SCALER_CLASSES:
            enabled = next((kw.value for kw in cand.keywords if kw.arg == "enabled"), None)
            return "disabled" if _is_false(enabled) else "scaler"
        if name and name.startswith("torch.optim.") and ".lr_scheduler." not in name and ".swa_utils." not in name:
            return "optimizer"
        unknown = unknown or name is None
    return None if unknown else "other"


def _whole_statement(ctx: Context, call: ast.Call) -> ast.stmt | None:
    """The statement ``call`` makes up alone (``f()`` or ``x = f()``), on its own line(s)."""
    stmt = ctx.parent(call)
    if not (isinstance(stmt, ast.Expr) or (isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is call)):
        return None
    first = ctx.lines[stmt.lineno - 1] if stmt.lineno <= len(ctx.lines) else ""
    last = ctx.lines[stmt.end_lineno - 1] if stmt.end_lineno and stmt.end_lineno <= len(ctx.lines) else ""
    if not (first.isascii() and last.isascii()):
        return None
    before = first[: stmt.col_offset]
    after = last[stmt.end_col_offset :].strip()
    if before.strip() or (after and not after.startswith("#")):
        return None  # shares its line with a compound header or another statement
    return stmt


def _last_segment(key: str) -> str:
    return key.rsplit(".", 1)[-1].lower()


_OPTIMIZER_NAME = re.compile(r"optimi[sz]er|(^|_)(opt|optim)s?($|_|\d)")


def _named_like_optimizer(key: str) -> bool:
    """``optimizer``, ``opt_d``, ``self.g_optimizer``: a zero-argument ``.step()`` on such a name
    is an optimizer step (``lr_scheduler``/``opt_scheduler`` are excluded)."""
    name = _last_segment(key)
    return "sched" not in name and _OPTIMIZER_NAME.search(name) is not None


def _scalers(events: list[_Event]) -> set[str]:
    """The keys that are GradScalers in this body (see the module docstring)."""
    origins: dict[str, str | None] = {}
    evidence: set[str] = set()
    for e in events:
        if e.key is None:
            continue
        origins.setdefault(e.key, e.origin)
        if e.kind in _USAGE_EVIDENCE or (
            e.kind == _STEP and e.arg is not None and _last_segment(e.key).endswith("scaler")
        ):
            evidence.add(e.key)
    return {
        k for k, origin in origins.items() if origin in ("scaler", "local scaler") or (origin is None and k in evidence)
    }


def _optimizers(events: list[_Event], scalers: set[str]) -> set[str]:
    """The keys that are optimizers in this body (see the module docstring)."""
    found = set()
    for e in events:
        if e.kind == _ZERO_GRAD and e.origin in (None, "optimizer", "other"):
            found.add(e.key)
        elif e.kind in (_STEP, _UNSCALE) and e.key in scalers and e.arg is not None:
            found.add(e.arg)
        elif e.origin == "optimizer" or (
            e.kind == _STEP and e.arg is None and e.origin != "other" and _named_like_optimizer(e.key)
        ):
            found.add(e.key)
    return found - scalers


# ---------------------------------------------------------------------------------------------
# The detector: one recording pass, then every check per body


class GradScalerProtocol(LintRule):
    rules = (AMP501, AMP502, AMP503, AMP504, AMP505, AMP506)
    checks = (
        _amp501_step_without_scaled_backward,
        _amp502_optimizer_step_bypasses_scaler,
        _amp503_clip_before_unscale,
        _amp504_unscale_twice_or_late,
        _amp505_update_missing_or_early,
        _amp506_unscaled_grad_penalty,
    )
    tokens = ("scaler", "Scaler", ".scale(", "unscale_")
    autofix_examples = (*_AMP502_AUTOFIX, *_AMP503_AUTOFIX, *_AMP504_AUTOFIX, *_AMP505_AUTOFIX)

    def visit_Call(self, node: ast.Call, ctx: Context) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            attr = func.attr
            if attr not in _WATCHED_ATTRS:
                return
        elif isinstance(func, ast.Name):
            attr = func.id
            if attr not in _WATCHED_NAMES:  # maybe an alias: `from torch.nn.utils import clip_grad_norm_ as clip`
                binding = ctx.lookup(attr)
                if binding is None or binding.import_target is None:
                    return
                attr = binding.import_target.rsplit(".", 1)[-1]
                if attr not in _WATCHED_NAMES:
                    return
        else:
            return
        event = _classify(node, attr, ctx)
        path = flow.path_to(node, ctx.parent) if event is not None else None
        if path is None:
            return
        kind, key, arg = event
        key = _canonical(ctx, key)
        events = ctx.scope_data(self).setdefault("events", [])
        origin = _origin(ctx, key) if key is not None else None
        if origin == "scaler" and key in ctx.scope.bindings:
            origin = "local scaler"  # constructed in this very body: no other function updates it
        events.append(_Event(kind, node, key, arg, path, len(events), origin, _whole_statement(ctx, node)))

    def leave_scope(self, node: ast.AST, ctx: Context) -> None:
        events: list[_Event] = ctx.scope_data(self).pop("events", None) or []
        file_data = self._file_data(ctx)
        owner = ctx.scope.parent.node if ctx.scope.parent is not None and ctx.scope.parent.is_class else None
        file_data.setdefault("self_updates", set()).update(
            (id(owner), e.key) for e in events if e.kind == _UPDATE and e.key.startswith("self.")
        )
        scalers = _scalers(events) if events else set()
        if scalers:
            stmts = node.body if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)) else []
            body = _Body(ctx, events, scalers, _optimizers(events, scalers), stmts)
            for check in self.checks:
                check(body)
            file_data.setdefault("deferred", []).extend(((id(owner), key), *rest) for key, *rest in body.deferred)
        if isinstance(node, ast.Module):
            _amp505_report_deferred(ctx, file_data.get("deferred", []), file_data["self_updates"])

    def _file_data(self, ctx: Context) -> dict:
        """Scratch space shared by every scope of the file (the module scope's)."""
        scope = ctx.scope
        while scope.parent is not None:
            scope = scope.parent
        return scope.data.setdefault(type(self).__name__, {})

    def fix_transformer(self, positions):
        return _scaler_fix(positions)


# ---------------------------------------------------------------------------------------------
# Autofix


def _scaler_fix(positions):
    # libcst is imported only when fixing: importing it costs ~0.25 s on every flake8 run
    import libcst as cst
    from libcst.metadata import PositionProvider

    from ..fixes import PositionalFix

    class _ScalerFix(PositionalFix):
        """Statement-level edits described by the finding's data: ``fix_replace`` (the call's new
        text), ``fix_before`` / ``fix_after`` (a statement inserted before / after the call's line),
        ``fix_remove`` (drop the call's line).
        The data is recomputed from the module's current source so the edit matches the detector."""

        def __init__(self, positions):
            super().__init__(positions)
            self._edits: dict[tuple[int, int], dict] = {}
            self._lines: list[dict | None] = []

        def visit_Module(self, node: cst.Module) -> bool:
            from ..api import Selection, lint_source  # api imports the rule registry: import late

            codes = tuple(r.code for r in GradScalerProtocol.rules)
            for f in lint_source(node.code, "<fix>", Selection(select=codes), noqa=False):
                if f.data.get("autofix") and (f.line, f.col) in self.positions:
                    self._edits[(f.line, f.col)] = dict(f.data)
            return True

        def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
            self._lines.append(None)
            return True

        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
            if not self._edits or not self._lines:
                return updated
            start = self.get_metadata(PositionProvider, original).start
            data = self._edits.get((start.line, start.column + 1))
            if data is None:
                return updated
            self._lines[-1] = data
            if "fix_replace" in data:
                return cst.parse_expression(data["fix_replace"])
            return updated

        def leave_SimpleStatementLine(self, original, updated):
            data = self._lines.pop()
            if data is None:
                return updated
            if data.get("fix_remove"):
                if any(line.comment is not None for line in updated.leading_lines):
                    return updated  # removing the line would drop the comment above it
                self.applied += 1
                return cst.RemoveFromParent()
            self.applied += 1
            before, after = data.get("fix_before"), data.get("fix_after")
            if not before and not after:
                return updated
            lines = []
            if before:
                lines.append(cst.parse_statement(before).with_changes(leading_lines=updated.leading_lines))
                updated = updated.with_changes(leading_lines=())
            lines.append(updated)
            if after:
                lines.append(cst.parse_statement(after))
            return cst.FlattenSentinel(lines)

    return _ScalerFix(positions)
