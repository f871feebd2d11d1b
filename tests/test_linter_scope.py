"""AMP101-AMP104 (autocast scope and API) and AMP201-AMP203 (manual casts): the tricky cases beyond
the rules' own examples (aliases, local imports, nesting, loops, decorators, compatibility code,
autofix details, and the correct patterns that must stay silent)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from training_profiler.linter.api import Selection, lint_source
from training_profiler.linter.fixes import fix_source

ALL = Selection(select=("AMP",))
SCOPE_CODES = ("AMP101", "AMP102", "AMP103", "AMP104", "AMP201", "AMP202", "AMP203")


def found(source: str, selection: Selection = ALL) -> list[tuple[str, int]]:
    """(code, line) of every finding of this task's codes, plus AMP000 (a rule crash)."""
    source = textwrap.dedent(source)
    return [(f.code, f.line) for f in lint_source(source, "t.py", selection) if f.code in (*SCOPE_CODES, "AMP000")]


def fixed(source: str) -> tuple[str, int]:
    source = textwrap.dedent(source)
    return fix_source(source, lint_source(source, "t.py", ALL))


# ---------------------------------------------------------------------------------------------
# The correct patterns must not fire


def test_standard_gradscaler_loop_and_correct_patterns_are_silent():
    source = """\
        import torch
        from torch import nn

        model = nn.Linear(10, 10).cuda()
        opt = torch.optim.Adam(model.parameters(), eps=1e-8)
        norm = nn.LayerNorm(10, eps=1e-12)
        scaler = torch.amp.GradScaler("cuda")
        loss_fn = nn.CrossEntropyLoss()

        def train(loader):
            for input, target in loader:
                opt.zero_grad()
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    output = model(input)
                    loss = loss_fn(output, target)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                scaler.step(opt)
                scaler.update()

        def mask_scores(x, mask):
            return x.masked_fill(mask, torch.finfo(x.dtype).min)

        try:
            from torch.amp import GradScaler, autocast
        except ImportError:
            from torch.cuda.amp import GradScaler, autocast
        """
    assert lint_source(textwrap.dedent(source), "t.py", ALL) == []


# ---------------------------------------------------------------------------------------------
# AMP101


def test_loss_outside_autocast_through_aliases_in_a_loop():
    source = """\
        import torch
        from torch.nn.functional import cross_entropy as ce
        ac = torch.autocast

        def train(loader, model, scaler, use_amp):
            for x, y in loader:
                with ac("cuda", enabled=use_amp):
                    out, aux = model(x)
                loss = ce(out, y) + aux.mean()
                scaler.scale(loss).backward()
        """
    assert found(source) == [("AMP101", 9)]


def test_loss_outside_autocast_local_import_inline_module_and_upcast():
    source = """\
        def train(model, x, y):
            import torch
            from torch import autocast, nn
            import torch.nn.functional as F
            with autocast("cuda"):
                out = model(x)
            def inner():  # another function: not reasoned about
                return F.mse_loss(out, y)
            a = nn.L1Loss()(out, y)
            b = F.l1_loss(out.to(torch.float32), y)
            c = F.kl_div(out.float().log_softmax(-1), y)
            with autocast("cuda"):
                d = F.mse_loss(out, y)
            return a + b + c + d
        """
    assert found(source) == [("AMP101", 9)]


def test_loss_module_moved_to_a_device_is_still_a_loss():
    source = """\
        import torch
        from torch import nn

        class Trainer:
            def __init__(self):
                self.criterion = nn.SmoothL1Loss(beta=0.5).to("cuda")

            def step(self, model, x, y):
                with torch.autocast("cuda"):
                    pred = model(x)
                return self.criterion(pred, y)
        """
    assert found(source) == [("AMP101", 11)]


def test_loss_outside_autocast_is_not_guessed_across_functions_or_user_functions():
    source = """\
        import torch
        import torch.nn.functional as F

        def forward(model, x):
            with torch.autocast("cuda"):
                return model(x)

        def step(model, x, y):
            out = forward(model, x)
            return F.cross_entropy(out, y)

        def cross_entropy(a, b):
            return a - b

        def other(model, x, y):
            with torch.autocast("cuda"):
                out = model(x)
            return cross_entropy(out, y)
        """
    assert found(source) == []


def test_loss_in_a_separate_disabled_block_is_outside_autocast():
    source = """\
        import torch
        import torch.nn.functional as F

        def step(model, x, y):
            with torch.autocast("cuda"):
                out = model(x)
            with torch.autocast("cuda", enabled=False):
                return F.nll_loss(out, y)
        """
    assert found(source) == [("AMP101", 8)]


# ---------------------------------------------------------------------------------------------
# AMP102


def test_backward_inside_autocast_decorator_nesting_and_scaler():
    source = """\
        import torch
        from torch.amp import autocast

        class Trainer:
            @autocast("cuda")
            def step(self, x):
                loss = self.model(x).sum()
                self.scaler.scale(loss).backward()

            def safe(self, x):
                with autocast("cuda"):
                    loss = self.model(x).sum()
                    with autocast("cuda", enabled=False):
                        loss.backward()
                loss.backward()

        def grads(loss):
            with torch.autocast("cpu"):
                torch.autograd.backward(loss)
        """
    assert found(source) == [("AMP102", 8), ("AMP102", 19)]


# ---------------------------------------------------------------------------------------------
# AMP103


def test_deprecated_api_is_reported_once_per_import_and_at_each_attribute_use():
    source = """\
        import torch.cuda.amp as amp
        from torch.cuda.amp import GradScaler, autocast
        from torch.cuda import amp as cuda_amp
        import torch as th

        scaler = GradScaler()
        with autocast():
            pass
        with amp.autocast():
            pass
        s = cuda_amp.GradScaler()
        ok = isinstance(s, (th.cuda.amp.GradScaler, th.amp.GradScaler))  # only compared: not a use
        same = ac in [th.cuda.amp.autocast, th.cpu.amp.autocast]
        SUPPORTED = {th.cuda.amp.autocast_mode.autocast, th.amp.autocast}  # a table, not a use
        with th.cpu.amp.autocast():
            pass
        make_scaler = th.cuda.amp.GradScaler
        """
    assert found(source) == [("AMP103", 2), ("AMP103", 9), ("AMP103", 11), ("AMP103", 15), ("AMP103", 17)]


def test_deprecated_api_in_compatibility_fallbacks_is_not_reported():
    source = """\
        import torch
        try:
            from torch.amp import custom_bwd, custom_fwd
        except (ImportError, AttributeError):
            from torch.cuda.amp import custom_bwd, custom_fwd
        try:
            scaler = torch.amp.GradScaler("cuda")
        except AttributeError:
            scaler = torch.cuda.amp.GradScaler()
        if torch.__version__ >= "2.4":
            ac = torch.amp.autocast("cuda")
        else:
            ac = torch.cuda.amp.autocast()
        if hasattr(torch.amp, "custom_fwd"):
            fwd = torch.amp.custom_fwd
        else:
            fwd = torch.cuda.amp.custom_fwd
        try:
            from torch.cuda.amp import autocast  # deprecated first: still reported
        except ImportError:
            from torch.amp import autocast
        """
    assert found(source) == [("AMP103", 19)]


def test_deprecated_attribute_fix_moves_positional_autocast_arguments_to_keywords():
    after, applied = fixed(
        """\
        import torch
        with torch.cuda.amp.autocast(False):
            pass
        with torch.cpu.amp.autocast(True, torch.bfloat16, cache_enabled=False):
            pass
        scaler = torch.cuda.amp.GradScaler(2.0**16, 2.0)
        make_scaler = torch.cuda.amp.GradScaler
        """
    )
    assert after == textwrap.dedent(
        """\
        import torch
        with torch.amp.autocast("cuda", enabled=False):
            pass
        with torch.amp.autocast("cpu", enabled=True, dtype=torch.bfloat16, cache_enabled=False):
            pass
        scaler = torch.amp.GradScaler("cuda", 2.0**16, 2.0)
        make_scaler = torch.cuda.amp.GradScaler
        """
    )
    assert applied == 3
    # a reference that is not called cannot be rewritten (the device argument has no place): still reported
    assert [f for f in found(after) if f[0] == "AMP103"] == [("AMP103", 7)]


def test_deprecated_import_fix_rewrites_every_use_including_decorators_and_local_imports():
    after, applied = fixed(
        """\
        import torch
        from torch.cuda.amp import custom_bwd, custom_fwd

        class Op(torch.autograd.Function):
            @staticmethod
            @custom_fwd(cast_inputs=torch.float32)
            def forward(ctx, x):
                return x

            @staticmethod
            @custom_bwd
            def backward(ctx, g):
                return g

        def step():
            from torch.cpu.amp import autocast
            with autocast(
                True,
                torch.bfloat16,
            ):
                pass
        """
    )
    assert after == textwrap.dedent(
        """\
        import torch
        from torch.amp import custom_bwd, custom_fwd

        class Op(torch.autograd.Function):
            @staticmethod
            @custom_fwd(device_type="cuda", cast_inputs=torch.float32)
            def forward(ctx, x):
                return x

            @staticmethod
            @custom_bwd(device_type="cuda")
            def backward(ctx, g):
                return g

        def step():
            from torch.amp import autocast
            with autocast(
                "cpu",
                enabled=True,
                dtype=torch.bfloat16,
            ):
                pass
        """
    )
    assert applied == 2
    assert found(after) == []


def test_deprecated_import_used_as_a_value_is_reported_but_not_fixed():
    source = """\
        from contextlib import nullcontext
        from torch.cuda.amp import GradScaler, autocast
        amp_context = autocast if use_amp else nullcontext
        scaler = GradScaler(enabled=use_amp)
        """
    findings = lint_source(textwrap.dedent(source), "t.py", ALL)
    assert [(f.code, f.line, f.data.get("autofix", False)) for f in findings] == [("AMP103", 2, False)]
    assert fixed(source) == (textwrap.dedent(source), 0)


def test_deprecated_api_noqa():
    source = """\
        import torch
        scaler = torch.cuda.amp.GradScaler()  # noqa: AMP103
        """
    assert found(source) == []


# ---------------------------------------------------------------------------------------------
# AMP104


def test_disabled_region_one_finding_per_statement_naming_each_tensor():
    source = """\
        import torch

        def f(m, x):
            with torch.autocast("cuda"):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    h = m(x)
                g = m(h)
                n = h.size(0)
                with torch.autocast("cuda", enabled=False):
                    if h.shape[0] > n:
                        y = h.float() + h.dtype.itemsize
                    z = torch.softmax(h, dim=-1) + g
                    w = g * 2
            return y, z, w
        """
    findings = [f for f in lint_source(textwrap.dedent(source), "t.py", ALL) if f.code == "AMP104"]
    assert [(f.line, f.col) for f in findings] == [(12, 31)]
    assert findings[0].message.startswith("'h', 'g' from the enclosing autocast region (bfloat16)")


def test_disabled_region_after_rebinding_to_fp32_and_self_attributes_of_other_methods():
    source = """\
        import torch

        class Head:
            def produce(self, x):
                with torch.autocast("cuda"):
                    self.h = self.proj(x)

            def consume(self):
                with torch.autocast("cuda"):
                    with torch.autocast("cuda", enabled=False):
                        return self.h.sum()

            def forward(self, x):
                with torch.autocast("cuda"):
                    self.q = self.proj(x)
                    with torch.autocast("cuda", enabled=False):
                        self.q = self.q.float()
                        return self.q @ self.q.T
        """
    assert found(source) == []


def test_softmax_on_autocast_output_in_disabled_region_is_reported_on_its_line():
    source = """\
        import torch

        def scores(proj, x):
            with torch.autocast("cuda"):
                logits = proj(x)
                with torch.autocast("cuda", enabled=False):
                    return torch.softmax(logits, dim=-1)
        """
    assert ("AMP104", 7) in found(source)


# ---------------------------------------------------------------------------------------------
# AMP201 / AMP202


def test_manual_cast_before_the_autocast_use_is_reported_at_module_end():
    source = """\
        import torch

        def prep(x):
            return x.half(), x.to(torch.float32), x.float(), torch.zeros(3, dtype=torch.float16)

        def move(x, device):
            return x.to(device, torch.bfloat16), x.to(dtype=torch.half), x.type("torch.cuda.HalfTensor")

        def step(model, x):
            with torch.autocast("cuda"):
                return model(x)
        """
    assert found(source) == [("AMP201", 4), ("AMP201", 7), ("AMP201", 7), ("AMP201", 7)]


def test_manual_cast_without_amp_in_the_file_is_fine():
    assert found("import torch\nx = torch.randn(3).half()\ny = x.to(torch.bfloat16)\n") == []


def test_pure_low_precision_cast_is_one_finding_not_two():
    source = """\
        import torch

        def build():
            model = Net().half().cuda()
            ema = Net().half()
            opt = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=1e-3)
            sched = torch.optim.lr_scheduler.StepLR(opt, 1)
            return model, ema, opt, sched

        scaler = torch.amp.GradScaler("cuda")
        """
    assert found(source) == [("AMP202", 4), ("AMP201", 5)]


def test_pure_low_precision_orders_and_scopes():
    source = """\
        import torch

        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.to(torch.bfloat16)

        def other_scope():
            net = Net()
            net.half()
            return net

        def build_opt(net):
            return torch.optim.SGD(net.parameters(), lr=0.1)

        def rebound():
            net = Net().half()
            net = Net()
            return torch.optim.SGD(net.parameters(), lr=0.1)
        """
    assert found(source) == [("AMP202", 5)]


# ---------------------------------------------------------------------------------------------
# AMP203


def test_gradscaler_with_bf16_is_info_and_off_by_default():
    source = """\
        import torch
        dtype = torch.bfloat16
        scaler = torch.amp.GradScaler("cuda")
        def step(model, x):
            with torch.autocast("cuda", dtype=dtype):
                return model(x)
        """
    assert found(source) == [("AMP203", 3)]
    assert found(source, Selection()) == []


def test_gradscaler_with_mixed_fp16_and_bf16_or_conditional_enable_is_fine():
    mixed = """\
        import torch
        scaler = torch.amp.GradScaler("cuda")
        def a(model, x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x)
        def b(model, x):
            with torch.autocast("cuda"):
                return model(x)
        """
    conditional = """\
        import torch
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        def a(model, x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x)
        """
    assert found(mixed) == []
    assert found(conditional) == []


# ---------------------------------------------------------------------------------------------
# Packaging


def test_rule_modules_import_neither_torch_nor_libcst():
    code = (
        "import sys\n"
        "import training_profiler.linter.rules.autocast, training_profiler.linter.rules.casts\n"
        "print(sorted(m for m in ('torch', 'libcst') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_disabled_region_ignores_loop_targets_and_keyword_only_losses_are_seen():
    source = """\
        import torch
        import torch.nn.functional as F

        def clip(model, x, y):
            with torch.autocast("cuda"):
                out = model(x)
                for p in model.parameters():
                    with torch.autocast("cuda", enabled=False):
                        p.grad.norm()
            return F.mse_loss(input=out, target=y)
        """
    assert found(source) == [("AMP101", 10)]


def test_hasattr_on_a_non_torch_object_is_not_a_compatibility_check():
    source = """\
        import torch
        if hasattr(model, "module"):
            scaler = torch.cuda.amp.GradScaler()
        """
    assert found(source) == [("AMP103", 3)]


def test_deprecated_api_behind_a_torch_version_flag_is_a_compatibility_fallback():
    """Modelled on pytorch-lightning 2.6.6 plugins/precision/amp.py line 54: the deprecated
    GradScaler is the fallback arm of a conditional expression on a torch >= 2.4 flag, where
    torch.amp.GradScaler(device=...) does not exist yet. Flags named like a version gate, names
    bound to RequirementCache / compare_version, packaging.version comparisons count too."""
    source = """\
        import operator
        import torch
        from packaging.version import Version
        from lightning_utilities.core.imports import RequirementCache, compare_version
        from lightning_fabric.utilities.imports import _TORCH_GREATER_EQUAL_2_4

        _NEW_AMP = RequirementCache("torch>=2.4")
        _OLD_TORCH = compare_version("torch", operator.lt, "2.4.0")

        class MixedPrecision:
            def __init__(self, precision, device, scaler=None):
                if scaler is None and precision == "16-mixed":
                    scaler = torch.amp.GradScaler(device=device) if _TORCH_GREATER_EQUAL_2_4 else torch.cuda.amp.GradScaler()
                self.scaler = scaler

        def make_scaler(device):
            if not _NEW_AMP:
                return torch.cuda.amp.GradScaler()
            if _OLD_TORCH:
                return torch.cuda.amp.GradScaler()
            if Version(torch.__version__) < Version("2.4"):
                return torch.cuda.amp.GradScaler()
            if TORCH_GE_2_4 or is_torch_less_or_equal("2.3"):
                return torch.amp.GradScaler(device)
            return torch.cuda.amp.GradScaler() if RequirementCache("torch<2.4") else None

        scaler = torch.cuda.amp.GradScaler() if precision == "16-mixed" else None  # not a version check
        if _is_lossless(scaler):
            ac = torch.cuda.amp.autocast()  # `lossless` is no version word
        """
    assert found(source) == [("AMP103", 27), ("AMP103", 29)]
