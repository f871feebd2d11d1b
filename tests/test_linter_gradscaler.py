"""AMP501-AMP506 (GradScaler protocol): cases beyond the rules' own examples.

Each test asserts the exact (line, code) pairs of the AMP5xx findings, so a rule that goes
silent or starts firing elsewhere fails here.
"""

from __future__ import annotations

import textwrap

import pytest

from training_profiler.linter.api import Selection, lint_source
from training_profiler.linter.fixes import fix_source

ALL = Selection(select=("AMP",))


def amp5(source: str) -> list[tuple[int, str]]:
    findings = lint_source(textwrap.dedent(source), "example.py", ALL)
    assert not [f for f in findings if f.code == "AMP000"], findings
    return [(f.line, f.code) for f in findings if f.code.startswith("AMP5")]


# ---------------------------------------------------------------------------------------------
# The recipes of the PyTorch AMP examples page must be clean

RECIPES = {
    "typical": """
        import torch
        from torch.amp import GradScaler, autocast

        scaler = GradScaler()
        for epoch in epochs:
            for input, target in data:
                optimizer.zero_grad()
                with autocast(device_type="cuda", dtype=torch.float16):
                    output = model(input)
                    loss = loss_fn(output, target)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    """,
    "clipping": """
        import torch

        scaler = torch.cuda.amp.GradScaler()
        for input, target in data:
            optimizer.zero_grad()
            with torch.autocast("cuda"):
                loss = loss_fn(model(input), target)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
    """,
    "accumulation": """
        import torch

        def train(model, data, optimizer, iters_to_accumulate):
            scaler = torch.amp.GradScaler("cuda")
            for i, (input, target) in enumerate(data):
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = loss_fn(model(input), target) / iters_to_accumulate
                scaler.scale(loss).backward()
                if (i + 1) % iters_to_accumulate == 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad()
    """,
    "penalty": """
        import torch

        scaler = torch.amp.GradScaler("cuda")
        for input, target in data:
            optimizer.zero_grad()
            with torch.autocast("cuda"):
                loss = loss_fn(model(input), target)
            scaled_grad_params = torch.autograd.grad(outputs=scaler.scale(loss), inputs=model.parameters(), create_graph=True)
            inv_scale = 1.0 / scaler.get_scale()
            grad_params = [p * inv_scale for p in scaled_grad_params]
            with torch.autocast("cuda"):
                grad_norm = 0
                for grad in grad_params:
                    grad_norm += grad.pow(2).sum()
                loss = loss + grad_norm.sqrt()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    """,
    "multiple": """
        import torch

        scaler = torch.amp.GradScaler("cuda")
        for input, target in data:
            optimizer0.zero_grad()
            optimizer1.zero_grad()
            with torch.autocast("cuda"):
                output0 = model0(input)
                output1 = model1(input)
                loss0 = loss_fn(2 * output0 + 3 * output1, target)
                loss1 = loss_fn(3 * output0 - 5 * output1, target)
            scaler.scale(loss0).backward(retain_graph=True)
            scaler.scale(loss1).backward()
            scaler.unscale_(optimizer0)
            scaler.step(optimizer0)
            scaler.step(optimizer1)
            scaler.update()
    """,
    "switchable": """
        import torch

        def train(args, model, data, optimizer):
            scaler = torch.amp.GradScaler("cuda", enabled=args.use_amp)
            for input, target in data:
                with torch.autocast("cuda", enabled=args.use_amp):
                    loss = loss_fn(model(input), target)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
    """,
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_amp_examples_page_recipes_are_clean(name):
    assert amp5(RECIPES[name]) == []


def test_micro_batch_loop_with_conditional_clip_is_clean():
    # accumulation over an inner loop, clipping only when configured, all inside a method
    assert amp5("""
        import torch

        class Trainer:
            def __init__(self, model, clip):
                self.model = model
                self.clip = clip
                self.scaler = torch.cuda.amp.GradScaler(enabled=True)
                self.optimizer = torch.optim.AdamW(model.parameters())

            def train(self, batches, micro_steps):
                while True:
                    for micro_step in range(micro_steps):
                        loss = self.model(next(batches)) / micro_steps
                        self.scaler.scale(loss).backward()
                    if self.clip != 0.0:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
    """) == []


# ---------------------------------------------------------------------------------------------
# How scalers are recognised


@pytest.mark.parametrize(
    "header,construct",
    [
        ("import torch", "torch.amp.GradScaler('cuda')"),
        ("import torch", "torch.cuda.amp.GradScaler()"),
        ("from torch.cuda.amp import GradScaler", "GradScaler()"),
        ("from torch.amp import GradScaler as GS", "GS('cuda', init_scale=2.0**14)"),
        ("import torch.cuda.amp as amp", "amp.GradScaler()"),
        ("from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler", "ShardedGradScaler()"),
        ("import torch", "torch.amp.GradScaler('cuda') if use_amp else None"),
    ],
)
def test_scaler_constructions_are_recognised(header, construct):
    # the scaler is called `s`, so only the construction identifies it
    source = f"""
        {header}

        def step(model, batch, optimizer, use_amp):
            s = {construct}
            loss = model(batch)
            loss.backward()
            s.step(optimizer)
            s.update()
    """
    assert amp5(source) == [(8, "AMP501")]


def test_local_import_of_gradscaler_is_resolved():
    assert amp5("""
        def step(model, batch, optimizer):
            from torch.cuda.amp import GradScaler
            s = GradScaler()
            model(batch).backward()
            s.step(optimizer)
            s.update()
    """) == [(6, "AMP501")]


def test_disabled_scaler_and_foreign_scalers_are_ignored():
    assert amp5("""
        import torch
        from sklearn.preprocessing import StandardScaler

        def a(model, batch, optimizer):
            scaler = torch.amp.GradScaler("cuda", enabled=False)
            model(batch).backward()
            scaler.step(optimizer)
            scaler.update()

        def b(model, batch, optimizer):
            scaler = StandardScaler()
            model(batch).backward()
            scaler.step(optimizer)
            scaler.update()
    """) == []


def test_unknown_object_needs_scaler_usage_or_name():
    # `s` has an unknown binding and is only stepped/updated: it could be anything, stay silent;
    # a parameter named `*scaler` stepped with an optimizer is taken as a GradScaler
    assert amp5("""
        def a(model, batch, optimizer, s):
            model(batch).backward()
            s.step(optimizer)
            s.update()

        def b(model, batch, optimizer, grad_scaler):
            model(batch).backward()
            grad_scaler.step(optimizer)
            grad_scaler.update()
    """) == [(9, "AMP501")]


def test_usage_identifies_a_scaler_of_unknown_binding():
    # `amp.scale(loss).backward()` on a parameter is enough to know `amp` scales the loss
    assert amp5("""
        def train_step(loss, optimizer, amp):
            optimizer.zero_grad()
            amp.scale(loss).backward()
            optimizer.step()
    """) == [(5, "AMP502")]


def test_self_scaler_from_init_and_after_use():
    # __init__ defines self.scaler before train_step uses it; the order of methods does not
    # matter because the name ends in `scaler`
    source = """
        import torch

        class Trainer:
            def train_step(self, batch):
                self.model(batch).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()

            def __init__(self):
                self.scaler = torch.amp.GradScaler("cuda")
    """
    assert amp5(source) == [(7, "AMP501")]


def test_scaled_loss_through_a_variable_counts_as_scaled():
    assert amp5("""
        import torch

        def a(loss, optimizer, scaler):
            scaled = scaler.scale(loss)
            scaled.backward()
            scaler.step(optimizer)
            scaler.update()

        def b(loss, optimizer, scaler):
            loss = scaler.scale(loss)
            loss.backward()
            scaler.step(optimizer)
            scaler.update()

        def c(loss, optimizer, scaler):
            torch.autograd.backward(scaler.scale(loss))
            scaler.step(optimizer)
            scaler.update()

        def d(loss, optimizer, scaler):
            torch.autograd.backward(loss)
            scaler.step(optimizer)
            scaler.update()
    """) == [(23, "AMP501")]


# ---------------------------------------------------------------------------------------------
# Control flow


def test_helpers_split_the_step_without_false_positives():
    assert amp5("""
        def backward(scaler, loss):
            scaler.scale(loss).backward()

        def optimizer_step(scaler, optimizer, model, clip):
            if clip:
                scaler.unscale_(optimizer)
            scaler.step(optimizer)

        def train(scaler, loader, optimizer, model):
            for loss in loader:
                backward(scaler, loss)
                optimizer_step(scaler, optimizer, model, 1.0)
                scaler.update()

        def train2(scaler, loader, optimizer, log):
            for loss in loader:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                log(scaler)  # may update the scaler: AMP505 stays silent
    """) == []


def test_early_return_and_continue_separate_paths():
    assert amp5("""
        def step(self, loss, optimizer):
            if self.warmup:
                self.scaler.update()
                return
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()

        def loop(loader, optimizer, scaler):
            for loss in loader:
                if loss is None:
                    scaler.update()
                    continue
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    """) == []


def test_if_else_switch_between_scaler_and_plain_step():
    assert amp5("""
        def train_step(loss, optimizer, scaler, use_amp):
            scaler.scale(loss).backward()
            if use_amp:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()

        def other(loss, optimizer, scaler):
            scaler.scale(loss).backward()
            scaler.step(optimizer) if scaler.is_enabled() else optimizer.step()
            scaler.update()
    """) == []


def test_a_switch_guard_on_the_scaler_name_does_not_hide_a_real_bypass():
    # the `if scaler is not None` surrounds both the scaled backward and optimizer.step()
    assert amp5("""
        def train_step(loss, optimizer, scaler=None):
            if scaler is not None:
                scaler.scale(loss).backward()
                optimizer.step()
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
    """) == [(5, "AMP502")]


def test_nested_function_is_its_own_scope():
    # the closure's step is not reasoned about together with the outer backward
    assert amp5("""
        def train(model, batch, optimizer, scaler):
            model(batch).backward()

            def closure():
                scaler.step(optimizer)
                scaler.update()

            return closure
    """) == []


def test_module_level_training_script():
    assert amp5("""
        import torch

        scaler = torch.amp.GradScaler("cuda")
        for x, y in loader:
            optimizer.zero_grad()
            with torch.autocast("cuda"):
                loss = model(x, y)
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scaler.update()
    """) == [(10, "AMP503"), (11, "AMP502")]


def test_scheduler_steps_are_not_optimizer_steps():
    assert amp5("""
        import torch

        def train(model, loader, optimizer, scaler):
            lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
            opt_scheduler = make_scheduler(optimizer)
            for loss in loader:
                scaler.scale(loss).backward()
                lr_scheduler.step()
                opt_scheduler.step()
                scaler.step(optimizer)
                scaler.update()
    """) == []


def test_optimizer_recognised_by_name_construction_or_zero_grad():
    assert amp5("""
        import torch

        def a(loss, scaler):
            scaler.scale(loss).backward()
            opt_g.step()

        def b(model, loss, scaler):
            sgd = torch.optim.SGD(model.parameters(), lr=0.1)
            scaler.scale(loss).backward()
            sgd.step()

        def c(loss, scaler, thing):
            thing.zero_grad()
            scaler.scale(loss).backward()
            thing.step()

        def d(loss, scaler, thing):
            scaler.scale(loss).backward()
            thing.step()  # unknown object, unknown role: silent
    """) == [(6, "AMP502"), (11, "AMP502"), (16, "AMP502")]


# ---------------------------------------------------------------------------------------------
# Individual rules: edge cases


def test_manual_unscale_then_optimizer_step_is_deliberate():
    assert amp5("""
        import torch

        def train_step(model, loss, optimizer, scaler):
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if torch.isfinite(norm):
                optimizer.step()
            scaler.update()
    """) == []


def test_clip_variants_and_aliases():
    assert amp5("""
        import torch.nn.utils as U
        from torch.nn.utils import clip_grad_norm_ as clip
        from torch.nn.utils.clip_grad import clip_grad_value_

        def train_step(model, loss, optimizer, scaler, clip_norm=None):
            scaler.scale(loss).backward()
            if clip_norm:
                clip(model.parameters(), clip_norm)
            U.clip_grad_norm(model.parameters(), 1.0)
            clip_grad_value_(model.parameters(), 1.0)
            model.clip_grad_norm_(1.0)  # a method (FSDP): not resolvable, not reported
            scaler.step(optimizer)
            scaler.update()
    """) == [(9, "AMP503"), (10, "AMP503"), (11, "AMP503")]


def test_clip_after_step_is_not_amp503():
    assert amp5("""
        import torch

        def train_step(model, loss, optimizer, scaler):
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    """) == []


def test_unscale_between_steps_of_two_gans_is_clean_but_twice_in_one_is_not():
    assert amp5("""
        def gan_step(scaler, loss_d, loss_g, opt_d, opt_g):
            scaler.scale(loss_d).backward()
            scaler.unscale_(opt_d)
            scaler.step(opt_d)
            scaler.update()
            scaler.scale(loss_g).backward()
            scaler.unscale_(opt_g)
            scaler.step(opt_g)
            scaler.update()

        def twice(scaler, loss, opt, clip):
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(opt)
            scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
    """) == [(16, "AMP504")]


def test_unscale_in_accumulation_loop_with_helper_is_silent():
    # the loop hands the scaler to a helper that may update it
    assert amp5("""
        def train(micro_batches, optimizer, scaler, maybe_step):
            for loss in micro_batches:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                maybe_step(scaler, optimizer)
            scaler.step(optimizer)
            scaler.update()
    """) == []


def test_update_missing_is_reported_once_at_the_last_step():
    assert amp5("""
        def train(loader, opt0, opt1, scaler):
            for loss in loader:
                scaler.scale(loss).backward()
                scaler.step(opt0)
                scaler.step(opt1)
    """) == [(6, "AMP505")]


def test_update_twice_per_function_with_steps_is_clean():
    assert amp5("""
        def two_phase(scaler, loss_a, loss_b, opt):
            scaler.scale(loss_a).backward()
            scaler.step(opt)
            scaler.update()
            scaler.scale(loss_b).backward()
            scaler.step(opt)
            scaler.update()
    """) == []


def test_update_before_step_inside_a_while_loop():
    assert amp5("""
        def train(batches, optimizer, scaler):
            while batches:
                loss = batches.pop()
                scaler.scale(loss).backward()
                scaler.update()
                scaler.step(optimizer)
    """) == [(6, "AMP505")]


def test_grad_penalty_variants():
    assert amp5("""
        import torch
        from torch.autograd import grad

        def a(model, loss, x, optimizer, scaler):
            g, = grad(loss, x, None, None, True)  # create_graph positionally
            scaled = scaler.scale(loss)
            h = torch.autograd.grad([scaled], x, create_graph=True)
            k = torch.autograd.grad(loss, x, create_graph=False)
            scaler.scale(loss + g.sum() + h[0].sum()).backward()
            scaler.step(optimizer)
            scaler.update()
    """) == [(6, "AMP506")]


def test_one_line_carries_two_codes_when_two_rules_apply():
    # the clip call is AMP503; nothing else is reported on that line
    findings = amp5("""
        import torch

        def train_step(model, loss, optimizer, scaler):
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); optimizer.step()
            scaler.update()
    """)
    assert findings == [(6, "AMP503"), (6, "AMP502")]


def test_noqa_silences_one_code():
    source = textwrap.dedent("""
        def train_step(loss, optimizer, scaler):
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            optimizer.step()  # noqa: AMP502
            scaler.update()
    """)
    assert [f.code for f in lint_source(source, "x.py", ALL)] == []


def test_odd_syntax_never_breaks_the_rule():
    assert amp5("""
        import torch

        def odd(scaler, opts, loss, cfg, items):
            f = lambda: scaler.step(opts[0])
            scaler.scale(loss).backward()
            scaler.step(*opts)
            getattr(scaler, "step")(opts[0])
            match cfg:
                case {"clip": c}:
                    scaler.unscale_(optimizer=opts[0])
                case _:
                    pass
            try:
                scaler.step(optimizer=opts[0])
            except ValueError:
                scaler.update()
            else:
                scaler.update()
            [scaler.update() for _ in items]
    """) == []


# ---------------------------------------------------------------------------------------------
# Autofixes


def fixed(source: str) -> str:
    source = textwrap.dedent(source)
    result, _ = fix_source(source, lint_source(source, "x.py", ALL))
    return result


def test_fix_inserts_update_after_the_direct_step_when_missing():
    assert fixed("""
        def train(loader, optimizer, scaler):
            for loss in loader:
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                optimizer.step()
    """) == textwrap.dedent("""
        def train(loader, optimizer, scaler):
            for loss in loader:
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    """)


def test_no_fix_where_the_rewrite_is_not_certain():
    unchanged = [
        # the update comes before the direct step: moving it is not a local edit
        """
        def a(loss, optimizer, scaler):
            scaler.scale(loss).backward()
            scaler.update()
            optimizer.step()
        """,
        # the clip shares its line with another statement
        """
        import torch
        def b(model, loss, optimizer, scaler):
            scaler.scale(loss).backward()
            x = 1; torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        """,
        # two optimizers: which one to unscale before the clip is not known
        """
        import torch
        def c(model, loss, opt0, opt1, scaler):
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt0)
            scaler.step(opt1)
            scaler.update()
        """,
        # steps in different blocks: where update() belongs is not known
        """
        def d(loss, opt0, opt1, scaler, flag):
            scaler.scale(loss).backward()
            scaler.step(opt0)
            if flag:
                scaler.step(opt1)
        """,
    ]
    for source in unchanged:
        findings = lint_source(textwrap.dedent(source), "x.py", ALL)
        assert findings and not any(f.data.get("autofix") for f in findings), findings
        assert fixed(source) == textwrap.dedent(source)


def test_fix_clip_in_accumulation_block_keeps_indentation():
    assert fixed("""
        from torch.nn.utils import clip_grad_norm_

        def fit(model, losses, optimizer, scaler, accum=4):
            for i, loss in enumerate(losses):
                scaler.scale(loss / accum).backward()
                if (i + 1) % accum == 0:
                    clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(optimizer)
                    scaler.update()
    """) == textwrap.dedent("""
        from torch.nn.utils import clip_grad_norm_

        def fit(model, losses, optimizer, scaler, accum=4):
            for i, loss in enumerate(losses):
                scaler.scale(loss / accum).backward()
                if (i + 1) % accum == 0:
                    scaler.unscale_(optimizer)
                    clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(optimizer)
                    scaler.update()
    """)


def test_alias_of_self_scaler_is_the_same_scaler():
    assert amp5("""
        import torch

        class Trainer:
            def __init__(self):
                self.scaler = torch.amp.GradScaler("cuda")

            def step(self, loss, optimizer):
                scaler = self.scaler
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                self.scaler.update()

            def broken(self, loss, optimizer):
                s = self.scaler
                loss.backward()
                s.step(optimizer)
                self.scaler.update()
    """) == [(17, "AMP501")]


def test_second_training_phase_without_amp_is_clean():
    assert amp5("""
        import torch

        def train(model, loader, optimizer, scaler):
            for loss in loader:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
            for loss in loader:  # fine-tuning phase in fp32
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
    """) == []


def test_clip_and_direct_step_are_fixed_together():
    assert fixed("""
        import torch

        def train(model, loader, optimizer):
            scaler = torch.amp.GradScaler("cuda")
            for x, y in loader:
                optimizer.zero_grad()
                scaler.scale(model(x, y)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
    """) == textwrap.dedent("""
        import torch

        def train(model, loader, optimizer):
            scaler = torch.amp.GradScaler("cuda")
            for x, y in loader:
                optimizer.zero_grad()
                scaler.scale(model(x, y)).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
    """)


def test_self_scaler_updated_in_another_method_is_not_missing():
    assert amp5("""
        class Trainer:
            def training_step(self, loss):
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)

            def on_step_end(self):
                self.scaler.update()

        class Broken:
            def training_step(self, loss):
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
    """) == [(13, "AMP505")]


def test_two_if_switch_on_the_scaler_with_accumulation_is_clean():
    assert amp5("""
        from torch import nn

        def update(model, batches, optimizer, scaler, max_norm):
            for loss in batches:
                if scaler:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            if scaler:
                scaler.unscale_(optimizer); nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                scaler.step(optimizer); scaler.update()
            else:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                optimizer.step()

        def guarded(model, loss, optimizer, scaler, clip):
            scaler.scale(loss).backward()
            if clip:
                if scaler.is_enabled():
                    scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
    """) == []


def test_decorated_step_and_aliased_constructor():
    assert amp5("""
        import functools
        import torch

        Scaler = torch.amp.GradScaler

        @functools.lru_cache(None)
        def make():
            return Scaler("cuda")

        @torch.autocast("cuda")
        @torch.compile
        def train_step(model, batch, optimizer):
            s = Scaler("cuda")
            model(batch).backward()
            s.step(optimizer)
            s.update()
    """) == [(16, "AMP501")]


def test_second_unscale_is_removed_only_when_the_first_always_ran():
    conditional_first = """
        def train_step(loss, optimizer, scaler, clip):
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(optimizer)
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
    """
    assert amp5(conditional_first) == [(6, "AMP504")]
    assert fixed(conditional_first) == textwrap.dedent(conditional_first)
    commented = """
        def train_step(loss, optimizer, scaler):
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            # unscale before stepping
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
    """
    assert fixed(commented) == textwrap.dedent(commented)


def test_update_missing_for_a_scaler_constructed_in_the_same_body():
    # the backward runs in a helper, but nobody else can update a scaler local to this function
    assert amp5("""
        import torch

        def train(model, loader, optimizer, backward):
            scaler = torch.amp.GradScaler("cuda")
            for batch in loader:
                backward(model, batch)
                scaler.step(optimizer)

        def shared(optimizer, scaler):
            scaler.step(optimizer)  # parameter: the caller may update it
    """) == [(8, "AMP505")]


def test_calls_inside_a_lambda_are_not_part_of_the_step():
    assert amp5("""
        def train(model, batch, optimizer, scaler, register):
            model(batch).backward()
            register(lambda: scaler.step(optimizer))
            scaler.update()
    """) == []
