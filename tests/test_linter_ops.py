"""Tricky cases for AMP302-AMP305 and AMP401-AMP403 beyond the rules' own examples:
aliases, local imports, nesting, loops, decorators, autofix edge cases and the correct patterns
that must stay clean."""

from __future__ import annotations

import textwrap

import pytest

from training_profiler.findings import Severity
from training_profiler.linter.api import Selection, lint_source
from training_profiler.linter.fixes import fix_source

ALL = Selection(select=("AMP",))
MINE = ("AMP302", "AMP303", "AMP304", "AMP305", "AMP306", "AMP401", "AMP402", "AMP403", "AMP404", "AMP405", "AMP406", "AMP000")


def found(source: str, selection: Selection = ALL, amp: bool = False) -> list[tuple[str, int, int]]:
    """(code, line, col) of this task's codes (and AMP000) for a dedented snippet; ``amp``: the
    package is configured as training with AMP (the low-precision rules do not need the file to say so)."""
    findings = lint_source(textwrap.dedent(source), "t.py", selection, amp=amp)
    return [(f.code, f.line, f.col) for f in findings if f.code in MINE]


def messages(source: str, code: str, amp: bool = False) -> list[str]:
    return [f.message for f in lint_source(textwrap.dedent(source), "t.py", ALL, amp=amp) if f.code == code]


def fixed(source: str) -> str:
    source = textwrap.dedent(source)
    new, _ = fix_source(source, lint_source(source, "t.py", ALL))
    return new


# ---------------------------------------------------------------------------------------------
# AMP302


def test_amp302_alias_local_import_and_message():
    src = """\
    import torch.nn.functional as nnf

    def f(x):
        from torch import softmax as sm
        h = x.bfloat16()
        return nnf.softmax(h, -1), sm(h, 0)
    """
    assert found(src) == [("AMP302", 6, 12), ("AMP302", 6, 32)]
    assert messages(src, "AMP302")[0] == (
        "softmax() without dtype= on a tensor cast to bfloat16 runs in fp16/bf16 and loses range or "
        "precision: pass dtype=torch.float32"
    )


@pytest.mark.parametrize(
    "expr",
    [
        "torch.sum(h, dtype=torch.float32)",  # dtype given
        "torch.softmax(h, -1, torch.float32)",  # positional dtype
        "h.float().softmax(-1)",  # cast back to float32 first
        "x.sum()",  # unknown dtype outside autocast: fine
        "np.sum(h)",  # numpy, not torch
        "self.norm(h)",  # a LayerNorm module, not Tensor.norm
        "h.sum(**kw)",  # dtype may be in **kw
    ],
)
def test_amp302_clean_calls(expr):
    src = f"""\
    import numpy as np
    import torch

    def f(self, x, kw):
        h = x.half()
        return {expr}
    """
    assert found(src) == []


def test_amp302_loop_rebinding_and_function_boundaries():
    src = """\
    import torch

    h = torch.ones(3).half()

    def per_item(xs):
        for x in xs:
            h = x.to("cuda", torch.float16)
            yield h.cumsum(0)
            h = h.float()
            yield h.cumsum(0)

    def other(h):  # the parameter shadows the module-level half tensor
        return h.sum()
    """
    assert found(src) == [("AMP302", 8, 15)]


def test_amp302_binding_in_the_other_if_arm_is_ignored_also_from_inside_a_lambda():
    """The cast happens in the other arm of the ``if``, so the softmax never sees a half tensor.
    The arm test walks through the lambda up to the function (flow.path_to stops at a lambda,
    which is why evident_precision keeps its own branch check)."""
    src = """\
    import torch

    def f(x, c):
        if c:
            y = x.half()
        else:
            g = lambda: y.softmax(-1)
            return g, y.softmax(-1)
        return y.softmax(-1)
    """
    assert found(src) == [("AMP302", 9, 12)]


def test_amp302_autocast_contexts():
    src = """\
    import torch

    @torch.autocast("cpu")
    def cpu_step(model, x):
        y = model(x)
        return y.softmax(-1), y.prod(), y.float().sum(), (y.argmax(-1) == x).sum(), x.long().cumsum(0)

    def cuda_step(model, x):
        with torch.autocast("cuda"):
            return x.half().softmax(-1), torch.log_softmax(model(x), -1)

    def disabled(model, x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model(x)
            with torch.autocast("cuda", enabled=False):
                return y.norm(2), torch.cumprod(y, 0)

    def computed_inside(self, criterion, y, t, p):
        with torch.autocast("cuda", enabled=False):
            loss = criterion(y.float(), t)
            return loss.sum(), torch.softmax(self.proj(y), -1), p[0].sum()
    """
    # CPU autocast: softmax fires, prod is promoted to float32 there, .float() is explicit;
    # CUDA autocast already runs these ops in float32; enabled=False runs them in y's dtype.
    # inside enabled=False only tensors that come in from outside are suspect (p, not loss)
    assert found(src) == [("AMP302", 6, 12), ("AMP302", 16, 20), ("AMP302", 16, 31), ("AMP302", 21, 61)]
    assert "under CPU autocast" in messages(src, "AMP302")[0]
    assert "inside autocast(enabled=False)" in messages(src, "AMP302")[1]


def test_amp302_is_a_warning_and_has_no_autofix():
    findings = lint_source("import torch\ny = torch.ones(2).half().sum()\n", "t.py", ALL)
    assert [(f.code, f.severity, f.data.get("autofix")) for f in findings] == [("AMP302", Severity.WARNING, None)]


# ---------------------------------------------------------------------------------------------
# AMP303 / AMP305

FUNCTION_WITHOUT_DECORATORS = """\
import torch

class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x @ x

    @staticmethod
    def backward(ctx, grad):
        return grad @ grad
"""


def test_amp303_uses_autocast_seen_after_the_class_and_in_expressions():
    later = FUNCTION_WITHOUT_DECORATORS + "\ndef step(x):\n    with torch.autocast('cuda'):\n        return Double.apply(x)\n"
    assert found(later) == [("AMP303", 3, 1)]
    assert messages(later, "AMP303") == [
        "custom autograd.Function Double: forward lacks @custom_fwd and backward lacks @custom_bwd in a file "
        "(or a package, amp = true) that uses autocast: decorate with @torch.amp.custom_fwd / custom_bwd(device_type=...)"
    ]
    expression = FUNCTION_WITHOUT_DECORATORS + "\namp = torch.autocast('cuda') if fast else contextlib.nullcontext()\n"
    assert found(expression) == [("AMP303", 3, 1)]


def test_amp305_is_info_and_off_by_default():
    findings = lint_source(FUNCTION_WITHOUT_DECORATORS, "t.py", ALL)
    assert [(f.code, f.severity, f.line) for f in findings] == [("AMP305", Severity.INFO, 3)]
    assert found(FUNCTION_WITHOUT_DECORATORS, Selection()) == []
    assert found(FUNCTION_WITHOUT_DECORATORS, Selection(extend_select=("AMP305",))) == [("AMP305", 3, 1)]


@pytest.mark.parametrize(
    "header,fwd,bwd",
    [
        ("from torch.cuda.amp import custom_fwd, custom_bwd", "@custom_fwd", "@custom_bwd"),
        ("import torch.amp as amp", "@amp.custom_fwd(device_type='cuda')", "@amp.custom_bwd(device_type='cuda')"),
        ("from .amp_utils import custom_fwd, custom_bwd", "@custom_fwd", "@custom_bwd"),  # unresolvable: trusted
        (
            "try:\n    from torch.amp import custom_fwd, custom_bwd\nexcept ImportError:\n"
            "    from torch.cuda.amp import custom_fwd, custom_bwd",
            "@custom_fwd(device_type='cuda')",
            "@custom_bwd(device_type='cuda')",
        ),
    ],
)
def test_amp303_accepted_decorator_spellings(header, fwd, bwd):
    src = (
        f"import torch\n{header}\n\nclass Double(torch.autograd.Function):\n    @staticmethod\n    {fwd}\n"
        f"    def forward(ctx, x):\n        return x @ x\n\n    @staticmethod\n    {bwd}\n"
        "    def backward(ctx, grad):\n        return grad @ grad\n\nwith torch.autocast('cuda'):\n    pass\n"
    )
    assert found(src) == []


def test_amp303_only_autograd_functions():
    src = """\
    import torch
    from torch import nn

    class Block(nn.Module):
        def forward(self, x):
            return x

    class Function:  # a user class of the same name
        @staticmethod
        def forward(ctx, x):
            return x
    with torch.autocast("cuda"):
        pass
    """
    assert found(src) == []


# ---------------------------------------------------------------------------------------------
# AMP304


def test_amp304_reports_and_fixability():
    src = """\
    import torch
    from torch import log, softmax

    a = log(softmax(x, 1))
    b = torch.log(torch.sum(torch.exp(x)))
    c = torch.exp(x) - 1 + y
    d = torch.log(self.softmax(x))
    """
    findings = lint_source(textwrap.dedent(src), "t.py", ALL)
    # bare imported names and a missing dim cannot be fixed safely; self.softmax may be a module
    assert [(f.code, f.line, f.col, bool(f.data.get("autofix"))) for f in findings] == [
        ("AMP304", 4, 5, False),
        ("AMP304", 5, 5, False),
        ("AMP304", 6, 5, True),
    ]
    assert [f.message for f in findings][1] == (
        "log(sum(exp(x))) overflows or loses precision (worst in fp16/bf16): use torch.logsumexp(x, dim)"
    )
    assert fixed(src).splitlines()[3:6] == ["a = log(softmax(x, 1))", "b = torch.log(torch.sum(torch.exp(x)))", "c = torch.expm1(x) + y"]


def test_amp304_logsigmoid_spelling_follows_the_imports():
    only_torch = "import torch as th\ny = th.log(th.sigmoid(z))\n"
    assert fixed(only_torch) == "import torch as th\ny = th.nn.functional.logsigmoid(z)\n"
    from_nn = "import torch\nfrom torch.nn import functional as fn\ny = torch.special.expit(z).log()\n"
    assert fixed(from_nn) == "import torch\nfrom torch.nn import functional as fn\ny = fn.logsigmoid(z)\n"
    # F is a parameter here, not the module: no fix; and no top-level torch import: no fix
    shadowed = "import torch\nimport torch.nn.functional as F\ndef f(F, z):\n    return torch.log(torch.sigmoid(z))\n"
    assert fixed(shadowed) == shadowed
    local = "def f(z):\n    import torch\n    return torch.log(torch.sigmoid(z))\n"
    assert found(local) == [("AMP304", 3, 12)]
    assert fixed(local) == local


def test_amp304_fix_keeps_formatting_and_arguments():
    src = """\
    import torch
    import torch.nn.functional as F

    loss = -torch.log(
        F.softmax(logits, dim=-1)  # class probabilities
    )
    lse = torch.log(torch.sum(torch.exp(s), 1, True))
    rate = torch.exp(x).sum(dim=0).log()
    z = (1 + -x).log() * (torch.exp(2 * x) - 1)
    r = t * (-i).sigmoid().log() + torch.log(torch.sum((0.5 * i).exp(), 1))
    """
    assert fixed(src) == textwrap.dedent(
        """\
        import torch
        import torch.nn.functional as F

        loss = -F.log_softmax(logits, dim=-1)
        lse = torch.logsumexp(s, 1, True)
        rate = torch.logsumexp(x, dim=0)
        z = (-x).log1p() * torch.expm1(2 * x)
        r = t * F.logsigmoid(-i) + torch.logsumexp(0.5 * i, 1)
        """
    )


@pytest.mark.parametrize(
    "expr",
    [
        "math.log(1 + x)",
        "np.log(np.sum(np.exp(x), 1))",
        "torch.log(1 + x, out=buf)",
        "torch.log(x + 1e-3)",
        "torch.exp(x) - y",
        "1 - torch.exp(x)",
        "torch.log_softmax(x, 1).exp()",
    ],
)
def test_amp304_clean(expr):
    assert found(f"import math\nimport numpy as np\nimport torch\ny = {expr}\n") == []


def test_amp304_noqa():
    assert found("import torch\ny = torch.log(1 + x)  # noqa: AMP304\n") == []


# ---------------------------------------------------------------------------------------------
# AMP401 / AMP402


def test_amp401_values_and_positions():
    src = """\
    import torch

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.neg = -1e9

        def forward(self, scores, mask, n):
            scores = scores.masked_fill(
                mask,
                value=self.neg,
            )
            a = torch.full((n,), -1e9, dtype=torch.half)
            b = torch.masked_fill(scores, mask, -65505.0)
            c = scores.new_full((n,), +1e5)
            d = torch.where(mask, -1e9, scores)
            return a, b, c, d
    """
    assert found(src) == [("AMP401", 11, 19), ("AMP401", 13, 30), ("AMP401", 14, 45), ("AMP401", 15, 35), ("AMP401", 16, 31)]
    assert messages(src, "AMP401")[0].startswith("fill value self.neg = -1e9 is outside the float16 range")


@pytest.mark.parametrize(
    "value",
    ["float('-inf')", "-float('inf')", "65504.0", "-1e4", "100000", "torch.finfo(scores.dtype).min", "torch.finfo(torch.float16).min"],
)
def test_fill_values_that_fit_fp16(value):
    src = f"import torch\ndef f(scores, mask):\n    return scores.masked_fill(mask, {value}), torch.where(mask, scores, {value})\n"
    assert found(src) == []


def test_fill_calls_that_are_not_torch_or_not_fp16():
    src = """\
    import numpy as np
    import torch

    a = np.where(c, x, -1e9)
    b = torch.full((2,), -1e9, dtype=torch.float32)
    c = torch.full((2,), -1e9, dtype=torch.bfloat16)
    """
    assert found(src) == []


@pytest.mark.parametrize(
    "value,shown",
    [
        ("torch.finfo().min", "torch.finfo().min"),
        ("torch.finfo(torch.bfloat16).min", "torch.finfo(torch.bfloat16).min"),
        ("np.finfo(np.float32).min", "np.finfo(np.float32).min"),
        ("-torch.finfo(torch.double).max", "-torch.finfo(torch.double).max"),
    ],
)
def test_amp402_hardcoded_dtypes(value, shown):
    src = f"import numpy as np\nimport torch\ny = scores.masked_fill(mask, {value})\n"
    assert found(src, amp=True) == [("AMP402", 3, 30)]
    assert messages(src, "AMP402", amp=True)[0].startswith(f"{shown} hard-codes a dtype wider than float16")


# ---------------------------------------------------------------------------------------------
# AMP403


def test_amp403_places():
    src = """\
    import torch

    def f(x, n, a, b, v):
        eps = 1e-8
        x /= n + 1e-9
        y = torch.div(a, b + 1e-9) + a.div(eps + b)
        z = x / (n + 6e-5) ** 0.5
        w = torch.clamp(x, 1e-10) + x.clamp_min(1e-7) + x.clamp(0, 1)
        return x / (a * (v + eps)), (v + 1e-10).log2()
    """
    assert found(src, amp=True) == [
        ("AMP403", 5, 14),
        ("AMP403", 6, 26),
        ("AMP403", 6, 40),
        ("AMP403", 7, 18),
        ("AMP403", 8, 24),
        ("AMP403", 8, 45),
        ("AMP403", 9, 26),
        ("AMP403", 9, 38),
    ]
    assert messages(src, "AMP403", amp=True)[2] == (
        "epsilon eps = 1e-8 guards `b`, which can be float16 (the package is configured with amp = true): "
        "below 6.1e-05 it rounds to 0 or a subnormal in fp16; compute in float32 or use torch.finfo(x.dtype).eps"
    )


def test_amp403_correct_patterns_stay_clean():
    src = """\
    import math
    import numpy as np
    import torch
    import torch.nn.functional as F

    def f(model, x, n, v):
        opt = torch.optim.AdamW(model.parameters(), eps=1e-8)
        ln = torch.nn.LayerNorm(64, eps=1e-12)
        y = F.normalize(x, eps=1e-12)
        z = (x + 1e-8) / n  # numerator: no guard
        return math.log(v + 1e-8), np.sqrt(v + 1e-12), x / (n + 1e-4), x / (n - 1e-8), y, z
    """
    assert found(src) == []


# ---------------------------------------------------------------------------------------------
# The correct patterns from the PyTorch AMP examples page must not fire


def test_standard_amp_training_loop_is_clean():
    src = """\
    import torch
    from torch import nn

    try:
        from torch.amp import GradScaler
    except ImportError:
        from torch.cuda.amp import GradScaler

    class Attention(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.norm = nn.LayerNorm(dim, eps=1e-12)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x, mask):
            h = self.proj(self.norm(x))
            scores = h @ h.transpose(-2, -1) / h.shape[-1] ** 0.5
            scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
            return scores.softmax(-1) @ h

    def train(model, loader, loss_fn, epochs):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
        scaler = GradScaler("cuda")
        for epoch in range(epochs):
            for input, target in loader:
                optimizer.zero_grad()
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    output = model(input)
                    loss = loss_fn(output, target)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
    """
    assert found(src) == []


# ---------------------------------------------------------------------------------------------
# Evident float32 and if/else branches (false positives seen on transformers' models)


def test_a_cast_in_the_other_branch_of_an_if_is_not_seen():
    src = """\
    import torch
    from torch import nn

    def attend(w):
        if w.dtype == torch.float16:
            w = nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(torch.float16)
        else:
            w = nn.functional.softmax(w, dim=-1)
        if w.dtype == torch.float16:
            h = w.half()
            return h.sum()
        return w.sum()
    """
    assert found(src) == [("AMP302", 11, 16)]


def test_evidently_float32_tensors_are_not_flagged_for_constants():
    src = """\
    import torch

    def f(mask, pixel_mask, n):
        a = mask.float().masked_fill(~mask, -1e9)
        b = torch.where(mask > 0, 0.0, -1e10)
        y_embed = pixel_mask.cumsum(1, dtype=torch.float32)
        c = y_embed / (y_embed[:, -1:, :] + 1e-6)
        d = torch.clamp(n.double(), min=1e-10).log10()
        e = torch.where(mask, a.half(), -1e9)
        return a, b, c, d, e
    """
    assert found(src) == [("AMP401", 9, 37)]


def test_amp304_softplus_is_suggested_not_rewritten():
    src = "import torch\ny = torch.log(1.0 + torch.exp(g))\n"
    assert messages(src, "AMP304") == [
        "log(1 + exp(x)) overflows or loses precision (worst in fp16/bf16): use F.softplus(x)"
    ]
    assert fixed(src) == src


def test_linting_these_rules_imports_neither_libcst_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from training_profiler.linter.api import lint_source, Selection\n"
        "src = 'import torch\\ny = torch.log(1 + x.half().sum()) / (n + 1e-8)\\nz = s.masked_fill(m, -1e9)\\n'\n"
        "print(sorted(f.code for f in lint_source(src, 't.py', Selection(select=('AMP',)))))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('libcst', 'torch')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ["['AMP302', 'AMP304', 'AMP401', 'AMP403']", "[]"], out.stderr


def test_amp304_autofixes_compute_the_same_values():
    """Run every AMP304 autofix example before and after the rewrite on real tensors."""
    torch = pytest.importorskip("torch")
    from training_profiler.linter.rules.ops import NaiveFormula

    torch.manual_seed(0)
    for before, after in NaiveFormula.autofix_examples:
        inputs = {name: torch.rand(4, 5) + 0.1 for name in ("x", "p", "q")}
        old, new = dict(inputs), dict(inputs)
        exec(before, old)
        exec(after, new)
        results = [k for k in old if k not in inputs and k not in ("torch", "F", "__builtins__")]
        assert results, before
        for name in results:
            torch.testing.assert_close(new[name], old[name], msg=f"{name} in {after!r}")


def test_amp402_through_a_self_attribute():
    src = """\
    import torch

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.neg = torch.finfo(torch.float32).min

        def forward(self, scores, mask):
            return scores.masked_fill(mask, self.neg)
    """
    assert found(src, amp=True) == [("AMP402", 9, 41)]
    assert messages(src, "AMP402", amp=True)[0].startswith("self.neg = torch.finfo(torch.float32).min hard-codes a dtype")


# ---------------------------------------------------------------------------------------------
# AMP403 reports only where the guarded value can be float16 (the "Trust" issue, item 4: 8 of 11
# findings on real code were on values that cannot be fp16). Every snippet uses fp16 autocast, so
# before the fix each of these epsilons was reported.

AUTOCAST_FILE = "import torch\n\nscaler = torch.amp.GradScaler('cuda')\n\n"


@pytest.mark.parametrize(
    "body",
    [
        # cast to float32 in the same function, followed through arithmetic and indexing (box areas)
        "def iou(boxes, inter):\n"
        "    b = boxes.to(torch.float32)\n"
        "    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])\n"
        "    return inter / (area + 1e-9)\n",
        # integer counts
        "def masked_mean(x, mask):\n"
        "    return (x * mask).sum(1) / mask.sum(1).clamp(min=1e-5)\n",
        "def accuracy(pred, y, items):\n"
        "    return (pred == y).sum() / ((pred == y).numel() + 1e-9), 1.0 / (len(items) + 1e-9)\n",
        # outputs of ops autocast runs in float32 (softmax, sum, log, exp, pow, norm)
        "def entropy(logits):\n"
        "    p = logits.softmax(-1)\n"
        "    return -(p * torch.log(p + 1e-10)).sum(-1)\n",
        "def rms(x):\n"
        "    ms = x.pow(2).mean(-1, keepdim=True)\n"
        "    return x / torch.sqrt(x.pow(2).sum(-1) + 1e-12), torch.rsqrt(ms + 1e-6)\n",
        "def lse(x):\n"
        "    return torch.log(x.exp().sum(-1) + 1e-8), x / (torch.linalg.vector_norm(x, dim=-1) + 1e-8)\n",
        # gradient-norm code: clipping functions and optimizers (fp32 master weights and state)
        "def clip_grad_norm_(parameters, max_norm):\n"
        "    total = torch.stack([p.grad.detach().abs().max() for p in parameters]).max()\n"
        "    return max_norm / (total + 1e-6)\n",
        "class Lion(torch.optim.Optimizer):\n"
        "    def step(self):\n"
        "        for p in self.params:\n"
        "            state = self.state[p]\n"
        "            p.data.add_(state['m'] / (state['v'].sqrt() + 1e-8))\n",
        "def agc(p):\n"
        "    return p.grad / (p.grad.abs().amax() + 1e-8)\n",
        # Python numbers are float64
        "def ratio(a, b):\n"
        "    return a / (float(b) + 1e-12), a / (b.item() + 1e-12), a / (b.shape[0] + 1e-12)\n",
    ],
    ids=["fp32-box-area", "mask-count", "bool-count-len", "softmax-log", "pow-sum-mean", "exp-norm", "clip", "optimizer", "grad", "python"],
)
def test_amp403_values_that_cannot_be_fp16_are_not_reported(body):
    src = AUTOCAST_FILE + body
    assert [f for f in lint_source(src, "t.py", ALL) if f.code in ("AMP403", "AMP406", "AMP000")] == []


def test_amp403_message_carries_the_evidence():
    src = """\
    import torch

    def f(model, x, w, v):
        h = x.half()
        a = w / (h.amax() + 1e-8)
        with torch.autocast('cuda'):
            y = model(x)
            b = torch.log(y + 1e-10)
        return a, b, w / (v + 1e-8)
    """
    assert messages(src, "AMP403") == [
        "epsilon 1e-8 guards `h.amax()`, which can be float16 (cast to float16: `h = x.half()` on line 4): below 6.1e-05 it "
        "rounds to 0 or a subnormal in fp16; compute in float32 or use torch.finfo(x.dtype).eps",
        "epsilon 1e-10 guards `y`, which can be float16 (`y` is computed under fp16 autocast (line 6)): below "
        "6.1e-05 it rounds to 0 or a subnormal in fp16; compute in float32 or use torch.finfo(x.dtype).eps",
        "epsilon 1e-8 guards `v`, which can be float16 (this file uses .half() on line 4): below 6.1e-05 it "
        "rounds to 0 or a subnormal in fp16; compute in float32 or use torch.finfo(x.dtype).eps",
    ]


def test_amp403_bfloat16_only_code_gets_readiness_advice():
    """bfloat16 has float32's exponent range: 1e-8 is representable there, so the guard works."""
    src = """\
    import torch

    def f(model, x, v):
        with torch.autocast('cuda', dtype=torch.bfloat16):
            y = model(x)
            return torch.log(y + 1e-10), x / (v + 1e-8)
    """
    findings = lint_source(textwrap.dedent(src), "t.py", ALL)
    # y is evidently bfloat16: nothing to say; v could become float16 under a later fp16 autocast
    assert [(f.code, f.severity, f.line, f.col) for f in findings] == [("AMP406", Severity.INFO, 6, 47)]
    assert findings[0].message.startswith("AMP readiness: epsilon 1e-8 guards `v`: fine in fp32")
    assert lint_source(textwrap.dedent(src), "t.py") == []  # info is off by default


# ---------------------------------------------------------------------------------------------
# Does the file run in low precision? Names resolve through imports; the tier follows.

FP32_BCE_CALL = "\ndef loss(p, y):\n    return F.binary_cross_entropy(p, y)\n"


@pytest.mark.parametrize(
    "header, evidence",
    [
        ("import torch.nn.functional as F\nfrom torch import autocast\n", "torch.autocast on line 2"),
        ("import torch.nn.functional as F\nfrom torch.cuda.amp import GradScaler as GS\n", "torch.cuda.amp.GradScaler on line 2"),
        ("import torch.nn.functional as F\nimport torch as T\nDTYPE = T.bfloat16\n", "torch.bfloat16 on line 3"),
        ("import torch.nn.functional as F\nmodel = net.half()\n", ".half() on line 2"),
        ("import torch.nn.functional as F\ntrainer = Trainer(precision='16-mixed')\n", "'16-mixed' on line 2"),
    ],
)
def test_amp301_is_an_error_where_the_file_uses_amp(header, evidence):
    findings = [f for f in lint_source(header + FP32_BCE_CALL, "t.py", ALL) if f.code.startswith("AMP30")]
    assert [(f.code, f.severity) for f in findings] == [("AMP301", Severity.ERROR)]
    assert f"({'this file uses ' + evidence}): use binary_cross_entropy_with_logits" in findings[0].message


@pytest.mark.parametrize(
    "header",
    [
        "import torch.nn.functional as F\n",
        "import torch.nn.functional as F\nhalf = 0.5\nx = y * half\n",  # not a cast
        "import torch.nn.functional as F\nimport numpy as np\nx = np.float16(1)\n",  # numpy's float16 is not torch's
        'import torch.nn.functional as F\n"""Use half the batch; float16 is for later."""\n',  # prose
        "import torch.nn.functional as F\nfrom mylib import autocast\n",  # a project helper of the same name
    ],
)
def test_amp301_is_readiness_advice_in_fp32_files(header):
    findings = lint_source(header + FP32_BCE_CALL, "t.py", ALL)
    assert [(f.code, f.severity) for f in findings if f.code.startswith("AMP30")] == [("AMP306", Severity.INFO)]
    assert lint_source(header + FP32_BCE_CALL, "t.py") == []  # off by default: no error in a DCGAN/VAE script
    assert [f.code for f in lint_source(header + FP32_BCE_CALL, "t.py", amp=True)] == ["AMP301"]


def test_amp401_needs_float16_evidence_not_bfloat16():
    fill = "\ndef attend(scores, mask):\n    return scores.masked_fill(mask, -1e9)\n"
    bf16 = "import torch\nDTYPE = torch.bfloat16\n" + fill
    fp16 = "import torch\nDTYPE = torch.float16\n" + fill
    assert [(f.code, f.severity) for f in lint_source(bf16, "t.py", ALL)] == [("AMP404", Severity.INFO)]
    assert [(f.code, f.severity) for f in lint_source(fp16, "t.py", ALL)] == [("AMP401", Severity.ERROR)]


def test_fill_value_with_the_dtype_of_a_bfloat16_tensor_is_not_reported():
    """diffusers' transformer_sana_wm: q, k, v are cast to bfloat16 for the attention kernel, and the
    -1e9 bias takes q's dtype: bfloat16 holds it."""
    src = """\
    import torch

    def attend(q, k, v, keep):
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
        return torch.where(keep, torch.zeros((), dtype=q.dtype), torch.full((), -1e9, dtype=q.dtype))

    def attend16(q, keep):
        q, n = q.half(), 1
        return torch.where(keep, q, torch.full((), -1e9, dtype=q.dtype))
    """
    assert found(src, amp=True) == [("AMP401", 9, 48)]


def test_amp403_tuple_assignments_lists_and_counts():
    src = AUTOCAST_FILE + (
        "def f(q, k, x, scaling, num_tokens, logits_split):\n"
        "    q, k = q.float(), k.float()\n"
        "    h = torch.matmul(torch.matmul(k, q), q)\n"
        "    mean, var = x.mean(), x.var()\n"
        "    probs = [torch.softmax(z, dim=1) for z in logits_split]\n"
        "    return (h / (h[:, -1:] + 1e-15), torch.rsqrt(var + 1e-8), x / (num_tokens + 1e-9),\n"
        "            torch.clamp(torch.stack(probs).mean(0), 1e-7, 1).log(), x / (self.ranknum[a] + 1e-5))\n"
    )
    assert [(f.code, f.line, f.col) for f in lint_source(src, "t.py", ALL)] == [("AMP403", 10, 56)]  # var + 1e-8 only


@pytest.mark.parametrize(
    "forward, backward",
    [
        ("return torch.block_diag(*x)", "return grad[0:2]"),  # peft's FastBlockDiag: indexing
        ("return x * torch.sigmoid(x)", "return grad * x"),  # timm's activations_me: elementwise
        ("dist.all_gather(out, x)\n        return torch.cat(out)", "return grad.chunk(2)[0]"),  # collectives
        ("return F.linear(x, w)", "w = w.to(grad.dtype)\n        return grad @ w"),  # peft's VeloraFunction
    ],
)
def test_amp303_functions_that_autocast_cannot_break(forward, backward):
    src = (
        "import torch\nimport torch.nn.functional as F\nimport torch.distributed as dist\n\n"
        "class Fn(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x, w=None):\n"
        f"        {forward}\n\n    @staticmethod\n    def backward(ctx, grad):\n        {backward}\n\n"
        "with torch.autocast('cuda'):\n    y = Fn.apply(x)\n"
    )
    assert found(src) == []
    if "grad.dtype" in backward:  # without adapting to the gradient's dtype, the matmuls can clash
        assert found(src.replace("w = w.to(grad.dtype)", "w = w.t()")) == [("AMP303", 5, 1)]


def test_amp403_a_rebinding_reads_the_previous_value():
    """diffusers' ace_step pipeline: `audio = audio.float()`, then `audio = audio / peak` reads the
    float32 audio; the guarded peak is float32."""
    src = AUTOCAST_FILE + (
        "def normalize(audio, other):\n"
        "    audio = audio.float()\n"
        "    audio = audio / audio.abs().amax().clamp(min=1.0)\n"
        "    other = other / 2\n"
        "    return audio.abs().amax().clamp(min=1e-6), other.clamp(min=1e-6)\n"
    )
    assert [(f.code, f.line, f.col) for f in lint_source(src, "t.py", ALL)] == [("AMP403", 9, 64)]
