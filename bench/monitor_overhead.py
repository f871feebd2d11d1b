"""Cost of @watch_training per training step on CPU, next to a naive per-parameter .item()
monitor, and against the floor of any gradient monitor.

    python bench/monitor_overhead.py [--steps 20] [--rounds 7] [--threads 1]
    python bench/monitor_overhead.py --only-cost [--cost-rounds 9] [--cost-steps 50] [--window-steps 0]
                                     [--duty-steps 0]

Two models: a small MLP and a small transformer encoder (2 layers, d_model 128, 4 heads, seq 64,
batch 16), SGD. Variants run interleaved in rounds (the machine may be shared); the figure per
variant is the median over rounds of the mean CPU time per step (process time, so other load on
the machine counts less). "monitor self" is the CPU time spent inside the monitor's own code
(its step entry/exit, optimizer and activation hooks), timed directly: the least noisy figure.
Scalar reads per step are counted with a dispatch mode (on a GPU each one is a host sync that
stalls the pipeline; the monitor's one on CPU is the loss, read into its statistics buffer in host
memory: with the buffer on a GPU the loss is a device copy instead, no read). "floor" is the plain step plus one ``torch._foreach_norm`` over the gradients, inside
the step (cold in cache, as the monitor reads them).

Cost against the floor (``--only-cost``; also after the table unless ``--cost-rounds 0``): a
2-layer d=256 transformer encoder, 16x64 tokens, AdamW. Per round, 50 steps with one timed
``_foreach_norm`` over the gradients where the monitor reads them (the floor: the op alone) and
50 monitored steps with the monitor's own CPU time (periodic transfers and cadenced precision
checks amortised over the 50 steps), in alternating order; printed: floor, added time and their
ratio, median and range over the rounds (target: ratio <= 1.5). ``--window-steps N`` adds the
same ratio with the added time measured as the step sees it (:func:`window_rows`: how much longer
the monitored step takes from the end of its backward, on one model, steps drawn at random); the
monitor's own CPU time above overstates that, as it also holds work the step then skips (the
optimizer reuses the gradients' Python objects the monitor created: 79 -> 57 us in AdamW's
``_init_group``). ``--duty-steps N`` adds what a
monitor reduced to its per-step duty costs in that step, piece by piece (collect the gradients,
norm, read the norms into a row, read the loss, check the row): the part of the ratio that no amortising
removes.

Framework rows (``--framework-steps 0`` skips them): the same transformer in a Lightning Trainer
and a Hugging Face Trainer, with and without ``WatchTrainingCallback``, fits alternated over the
rounds; a clock callback times the steps after the first 20 of each fit (CPU time; the first
log_dict call sets up Lightning's metric collection), and the
callback's own CPU time (its hooks and the monitor's optimizer hooks) is timed directly.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from training_profiler import watch_training  # noqa: E402
from training_profiler.runtime import TrainingMonitor  # noqa: E402


class _Transformer(nn.Module):
    def __init__(self, vocab=1000, d=128, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)))


def _mlp_case():
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    return model, lambda m: F.cross_entropy(m(x), y)


def _transformer_case():
    model = _Transformer()
    tokens = torch.randint(0, 1000, (16, 64))
    return model, lambda m: F.cross_entropy(m(tokens).flatten(0, 1), tokens.flatten())


def _step_fn(variant, model, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def plain(model):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        opt.step()
        return loss

    if variant == "none":
        return plain
    if variant == "floor":  # the least any gradient monitor does: read every gradient once

        def floor(model):
            loss = plain(model)
            torch._foreach_norm([p.grad for p in model.parameters() if p.grad is not None])
            return loss

        return floor
    if variant == "watch_training":
        return watch_training(plain, warmup_steps=100, alert_window=50)
    stats = {}

    def naive(model):  # a per-parameter debugger / Lightning grad_norm style: one sync per parameter
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        loss.backward()
        for name, p in model.named_parameters():
            stats[name] = p.grad.norm().item()
        stats["loss"] = loss.item()
        opt.step()
        return loss

    return naive


class _CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _SelfTime:
    """CPU time spent inside the monitor's entry points (they do not nest)."""

    ENTRY_POINTS = ("_begin_step", "_end_step", "_optimizer_pre_hook", "_optimizer_post_hook", "_act_hook")

    def __init__(self):
        self.seconds = 0.0
        self._saved = {}

    def __enter__(self):
        for name in self.ENTRY_POINTS:
            original = self._saved[name] = getattr(TrainingMonitor, name)

            def timed(monitor, *args, _original=original, **kwargs):
                t = time.thread_time()
                try:
                    return _original(monitor, *args, **kwargs)
                finally:
                    self.seconds += time.thread_time() - t

            setattr(TrainingMonitor, name, timed)
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(TrainingMonitor, name, original)


def measure(case, steps: int, rounds: int) -> dict[str, dict[str, float]]:
    variants = ("none", "floor", "watch_training", "naive .item()")
    with _SelfTime() as self_time:  # from before the first step: the monitor's optimizer hooks are bound then
        fns = {}
        for v in variants:
            model, loss_fn = case()
            fns[v] = (_step_fn(v, model, loss_fn), model)
        for fn, model in fns.values():  # warm-up (and the monitor's own warm-up)
            for _ in range(110 if fn is fns["watch_training"][0] else 10):
                fn(model)
        times = {v: [] for v in variants}
        for _ in range(rounds):
            for v in variants:
                fn, model = fns[v]
                t = time.process_time()
                for _ in range(steps):
                    fn(model)
                times[v].append((time.process_time() - t) / steps)
        out = {}
        for v in variants:
            fn, model = fns[v]
            with _CountSyncs() as mode:
                for _ in range(steps):
                    fn(model)
            out[v] = {"ms": statistics.median(times[v]) * 1e3, "syncs": mode.count / steps}
        # self time without the dispatch mode's own overhead
        fn, model = fns["watch_training"]
        self_time.seconds = 0.0
        for _ in range(steps * 2):
            fn(model)
        out["watch_training"]["self_ms"] = self_time.seconds / (steps * 2) * 1e3
    return out


def _cost_step(variant: str, floor_time: list[float]):
    """The cost target's training step: a 2-layer d=256 transformer encoder, 16x64 tokens, AdamW.
    ``floor``: the plain step plus one timed ``_foreach_norm`` over the gradients, where the monitor
    reads them (after the backward, before the optimizer step)."""
    torch.manual_seed(0)
    model = _Transformer(d=256)
    tokens = torch.randint(0, 1000, (16, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(model):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        if variant == "floor":
            grads = [p.grad for p in model.parameters()]
            t = time.thread_time()
            torch._foreach_norm(grads)  # the op alone: collecting the gradients is part of the monitor's time only
            floor_time[0] += time.thread_time() - t
        opt.step()
        return loss

    return (watch_training(step) if variant == "watch_training" else step), model


def cost_rows(rounds: int, steps: int) -> list[float]:
    """The monitor's own CPU time per step (its periodic work amortised over ``steps``, a multiple of
    ``precision_every``) against the floor, one ``_foreach_norm`` over the same gradients; the two
    variants alternate over the rounds. Prints both and their ratio per round; returns the ratios."""
    floor_time = [0.0]
    rows: list[tuple[float, float]] = []  # per round: floor, added (ms/step)
    with _SelfTime() as self_time:  # from before the first step: the monitor's optimizer hooks are bound then
        fns = {v: _cost_step(v, floor_time) for v in ("floor", "watch_training")}
        for fn, model in fns.values():  # warm-up, and the monitor's own warm-up (100 steps)
            for _ in range(110 if fn is fns["watch_training"][0] else 10):
                fn(model)
        for r in range(rounds):
            floor_time[0] = self_time.seconds = 0.0
            for v in ("floor", "watch_training") if r % 2 == 0 else ("watch_training", "floor"):
                fn, model = fns[v]
                monitor_time = self_time.seconds
                for _ in range(steps):
                    fn(model)
                if v == "floor":  # the monitor's optimizer hook is global: it runs (and returns at once) in the
                    self_time.seconds = monitor_time  # floor's steps too, which no single training run has
            rows.append((floor_time[0] / steps * 1e3, self_time.seconds / steps * 1e3))
    floor, added = (sorted(col) for col in zip(*rows))
    ratios = sorted(a / f for f, a in rows)

    def spread(values):
        return f"median {statistics.median(values):6.3f}  (rounds {values[0]:.3f}-{values[-1]:.3f})"

    print(f"monitor cost against the floor: transformer d=256, 2 layers, 16x64 tokens, AdamW, CPU, "
          f"{torch.get_num_threads()} thread(s), {rounds} rounds x {steps} steps per variant, alternated")
    print(f"  floor: one _foreach_norm over the gradients (ms/step)    {spread(floor)}")
    print(f"  added: the monitor's own CPU time (ms/step, amortised)  {spread(added)}")
    print(f"  ratio added / floor (target <= 1.5)                     {spread(ratios)}")
    return ratios


def duty_rows(steps: int) -> None:
    """What a monitor reduced to its per-step duty costs, piece by piece, in the cost target's step,
    as the monitor does it on CPU: the norm alone (the floor), then with the gradients collected
    from the parameters, with the norms read as Python floats into a row (one ``.item()`` each), with
    the loss read into it, with the row's NaN/Inf check (a sum of its norms). The five variants are
    drawn at random per step, so load on the machine falls on all alike; printed: the median thread
    time of each per step."""
    import random

    import torch.optim.optimizer as optimizer_hooks

    torch.manual_seed(0)
    model = _Transformer(d=256)
    tokens = torch.randint(0, 1000, (16, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = list(model.parameters())
    host_rows = [[math.nan] * (1 + len(params)) for _ in range(10)]
    names = ("the norm alone (floor)", "+ collect the gradients", "+ read the norms into the row",
             "+ read the loss into it", "+ NaN/Inf check of the row")
    times: dict[int, list[float]] = {v: [] for v in range(len(names))}
    state = {"variant": 0, "row": 0, "t": 0.0}

    def pre_hook(optimizer, args, kwargs):
        variant = state["variant"]
        grads = [p.grad for p in params] if variant == 0 else None
        t = time.thread_time()
        if grads is None:
            grads = [g for p in params if (g := p.grad) is not None]
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        if variant >= 2:
            host_rows[state["row"]][1:] = [n.item() for n in norms]
        state["t"] = time.thread_time() - t

    handle = optimizer_hooks.register_optimizer_step_pre_hook(pre_hook)
    try:
        for i in range(30 + steps):
            state["variant"] = variant = random.randrange(len(names))
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
            loss.backward()
            opt.step()
            t = time.thread_time()
            if variant >= 3:
                row = host_rows[state["row"]]
                row[0] = loss.item()
                if variant == 4:
                    math.isfinite(row[0]) and math.isfinite(sum(row[1:]))
                state["row"] = (state["row"] + 1) % len(host_rows)
            if i >= 30:
                times[variant].append((state["t"] + (time.thread_time() - t if variant >= 3 else 0.0)) * 1e6)
    finally:
        handle.remove()
    print(f"a monitor's per-step duty, piece by piece (same step, {steps} steps drawn at random; median us/step):")
    floor = statistics.median(times[0])
    for v, name in enumerate(names):
        us = statistics.median(times[v])
        print(f"  {name:34}{us:8.0f}  ({us / floor:.2f}x the floor)")


def window_rows(steps: int) -> float:
    """The monitor's added time as the step sees it: one model and optimizer, each step drawn at
    random as plain, floor (one timed ``_foreach_norm`` before the optimizer step) or monitored; timed from the end
    of the backward to the end of the step (thread time), plus the monitor's work before that
    window (its step entry, activation hooks). The monitored steps' medians by kind (ordinary,
    transfer every 10th, precision every 50th) are weighted 44:5:1 as in 50 steps; the plain steps'
    median is subtracted, and the monitor's optimizer hook, which is global and returns at once in
    a plain step, is added back. Unlike the monitor's own CPU time (:func:`cost_rows`) this counts
    what the monitor saves the step: the optimizer reuses the gradients' Python objects that the
    monitor created, and reads gradients that the norm brought into the cache; the floor is the
    norm op alone in both. Returns the ratio."""
    import random

    torch.manual_seed(0)
    model = _Transformer(d=256)
    tokens = torch.randint(0, 1000, (16, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mark = {"backward_done": 0.0, "floor": 0.0, "before_window": 0.0, "idle_hook": 0.0, "monitored": False}

    def plain(model, floor=False):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        mark["backward_done"] = time.thread_time()
        if floor:
            grads = [p.grad for p in model.parameters()]
            t = time.thread_time()
            torch._foreach_norm(grads)
            mark["floor"] = time.thread_time() - t
        opt.step()
        return loss

    watched = watch_training(plain)
    saved = {}
    for name in ("_begin_step", "_act_hook", "_optimizer_pre_hook"):  # the monitor's time outside the window
        original = saved[name] = getattr(TrainingMonitor, name)

        def timed(monitor, *args, _original=original, _name=name, **kwargs):
            t = time.thread_time()
            try:
                return _original(monitor, *args, **kwargs)
            finally:
                if _name != "_optimizer_pre_hook" and mark["monitored"]:
                    mark["before_window"] += time.thread_time() - t
                elif _name == "_optimizer_pre_hook" and not mark["monitored"]:
                    mark["idle_hook"] = time.thread_time() - t

        setattr(TrainingMonitor, name, timed)
    kinds = ("plain", "floor", "idle hook", "ordinary", "transfer", "precision")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for _ in range(110):  # the monitor's warm-up
            watched(model)
        for i in range(30 + steps):
            variant = random.choice(("plain", "floor", "monitored"))
            mark["monitored"], mark["before_window"] = variant == "monitored", 0.0
            step = watched.monitor.step_count + 1
            (watched if variant == "monitored" else plain)(model, *(() if variant != "floor" else (True,)))
            window = time.thread_time() - mark["backward_done"]
            if i < 30:
                continue
            if variant == "monitored":
                kind = "precision" if (step - 1) % 50 == 0 else "transfer" if step % 10 == 0 else "ordinary"
                samples[kind].append(window + mark["before_window"])
            else:
                samples["idle hook"].append(mark["idle_hook"])
                samples[variant].append(window if variant == "plain" else mark["floor"])
    finally:
        for name, original in saved.items():
            setattr(TrainingMonitor, name, original)
        watched.monitor.close()
    us = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    added = (44 * us["ordinary"] + 5 * us["transfer"] + us["precision"]) / 50 - us["plain"] + us["idle hook"]
    print(f"the step's added time: same model, {steps} steps drawn at random (plain / floor / monitored), "
          f"median thread time from the end of the backward to the end of the step (us)")
    print(f"  plain step                               {us['plain']:9.0f}   monitored: ordinary "
          f"{us['ordinary']:.0f}, transfer {us['transfer']:.0f}, precision {us['precision']:.0f}")
    print(f"  floor: one _foreach_norm                 {us['floor']:9.0f}")
    print(f"  added: 44:5:1 over the plain step        {added:9.0f}   (the idle global hook added back: "
          f"{us['idle hook']:.0f})")
    print(f"  ratio added / floor (target <= 1.5)      {added / us['floor']:9.3f}")
    return added / us["floor"]


class _Clock:
    """CPU time from the start of step ``skip`` + 1 to the end of the last step, and the CPU time
    spent inside the given methods of given objects (they do not nest)."""

    def __init__(self, skip: int = 20):
        self.skip, self.steps, self.start, self.end, self.own = skip, 0, None, None, 0.0

    def step_begin(self):
        if self.steps == self.skip:
            self.start = time.process_time()

    def step_end(self):
        self.steps += 1
        self.end = time.process_time()

    def per_step_ms(self) -> float:
        return (self.end - self.start) / (self.steps - self.skip) * 1e3

    def time_methods(self, obj, names):
        for name in names:
            original = getattr(obj, name)

            def timed(*args, _original=original, **kwargs):
                t = time.thread_time()
                try:
                    return _original(*args, **kwargs)
                finally:
                    if self.steps >= self.skip:
                        self.own += time.thread_time() - t

            setattr(obj, name, timed)


# bound when registered: patch the instance first
_MONITOR_HOOKS = ("_optimizer_pre_hook", "_optimizer_post_hook", "_act_hook")


def _lightning_fit(watch: bool, steps: int) -> _Clock:
    import pytorch_lightning as pl

    from training_profiler.runtime.lightning import WatchTrainingCallback

    clock = _Clock()

    class Clock(pl.Callback):
        def on_train_batch_start(self, *args):
            clock.step_begin()

        def on_train_batch_end(self, *args):
            clock.step_end()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = _Transformer()

        def training_step(self, tokens, batch_idx):
            return F.cross_entropy(self.net(tokens).flatten(0, 1), tokens.flatten())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-4)

    callbacks = [Clock()]
    if watch:
        callback = WatchTrainingCallback(warmup_steps=100)
        clock.time_methods(callback, ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end"))
        clock.time_methods(callback.monitor, _MONITOR_HOOKS)
        callbacks.append(callback)
    tokens = torch.randint(0, 1000, (16 * steps, 64), generator=torch.Generator().manual_seed(0))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(Module(), torch.utils.data.DataLoader(tokens, batch_size=16))
    return clock


def _transformers_fit(watch: bool, steps: int) -> _Clock:
    import tempfile

    import transformers

    from training_profiler.runtime.transformers import WatchTrainingCallback

    clock = _Clock()

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            clock.step_begin()

        def on_step_end(self, *args, **kwargs):
            clock.step_end()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = _Transformer()

        def forward(self, input_ids):
            return {"loss": F.cross_entropy(self.net(input_ids).flatten(0, 1), input_ids.flatten())}

    callbacks = [Clock()]
    if watch:
        callback = WatchTrainingCallback(warmup_steps=100)
        clock.time_methods(callback, ("on_step_begin", "on_pre_optimizer_step", "on_step_end", "on_log",
                                      "_forward_hook", "_on_backward", "_after_backward"))
        clock.time_methods(callback.monitor, _MONITOR_HOOKS)
        callbacks.append(callback)
    tokens = torch.randint(0, 1000, (16 * steps, 64), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": t} for t in tokens]
    model = Model()
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16,
                                              use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                                              logging_steps=10**6, dataloader_num_workers=0)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks,
                                       optimizers=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)))
        trainer.train()
    return clock


def _floor_ms(reps: int = 200) -> float:
    """The floor of any gradient monitor: one ``_foreach_norm`` over the transformer's gradients."""
    model, loss_fn = _transformer_case()
    loss_fn(model).backward()
    grads = [p.grad for p in model.parameters()]
    times = []
    for _ in range(7):
        t = time.process_time()
        for _ in range(reps):
            torch._foreach_norm(grads)
        times.append((time.process_time() - t) / reps * 1e3)
    return statistics.median(times)


def framework_rows(steps: int, rounds: int) -> None:
    """Print, per framework, the step time without and with WatchTrainingCallback (median over rounds)."""
    import importlib.util
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"\nframework callbacks, transformer, {rounds} rounds x {steps} steps (first 20 of each fit untimed)")
    print(f"{'framework':14}{'variant':16}{'ms/step':>9}{'added ms':>10}{'added %':>9}")
    print(f"{'(any)':14}{'floor':16}{'':9}{_floor_ms():10.3f}{'':9}   one _foreach_norm over the gradients")
    for name, module, fit in (("Lightning", "pytorch_lightning", _lightning_fit),
                              ("HF Trainer", "transformers", _transformers_fit)):
        if importlib.util.find_spec(module) is None:
            print(f"{name:14}(not installed)")
            continue
        times = {False: [], True: []}
        own = []
        for _ in range(rounds):
            for watch in (False, True):
                clock = fit(watch, steps)
                times[watch].append(clock.per_step_ms())
                if watch:
                    own.append(clock.own / (clock.steps - clock.skip) * 1e3)
        base, watched = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:14}{'plain Trainer':16}{base:9.3f}")
        print(f"{name:14}{'+ callback':16}{watched:9.3f}{watched - base:10.3f}{(watched - base) / base:9.2%}")
        callback_own = statistics.median(own)
        print(f"{name:14}{'callback self':16}{'':9}{callback_own:10.3f}{callback_own / base:9.2%}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--framework-steps", type=int, default=60, help="steps per framework fit (0: skip them)")
    parser.add_argument("--only-frameworks", action="store_true", help="only the framework rows")
    parser.add_argument("--only-cost", action="store_true", help="only the cost against the floor")
    parser.add_argument("--cost-rounds", type=int, default=9, help="rounds of the cost against the floor (0: skip)")
    parser.add_argument("--cost-steps", type=int, default=50, help="steps per variant and round of the cost")
    parser.add_argument("--window-steps", type=int, default=0,
                        help="with --only-cost: also the step's added time (end of backward to end of step), "
                             "over this many steps drawn at random")
    parser.add_argument("--duty-steps", type=int, default=0,
                        help="with --only-cost: also the per-step duty piece by piece, over this many steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.only_cost:
        if args.cost_rounds:
            cost_rows(args.cost_rounds, args.cost_steps)
        if args.window_steps:
            window_rows(args.window_steps)
        if args.duty_steps:
            duty_rows(args.duty_steps)
        return 0
    if args.only_frameworks:
        framework_rows(args.framework_steps, args.rounds)
        return 0
    print(f"monitor overhead on CPU ({args.threads} thread(s), {args.rounds} rounds x {args.steps} steps, "
          f"median of round means)")
    print(f"{'model':14}{'variant':16}{'ms/step':>9}{'added ms':>10}{'added %':>9}{'reads/step':>12}")
    for name, case in (("small MLP", _mlp_case), ("transformer", _transformer_case)):
        r = measure(case, args.steps, args.rounds)
        base = r["none"]["ms"]
        for v, m in r.items():
            added = m["ms"] - base
            print(f"{name:14}{v:16}{m['ms']:9.3f}{added:10.3f}{added / base:9.2%}{m['syncs']:12.2f}")
        own = r["watch_training"]["self_ms"]  # its hooks included, so the norm's read of the gradients too
        print(f"{name:14}{'monitor self':16}{'':9}{own:10.3f}{own / base:9.2%}")
    if args.cost_rounds:
        print()
        cost_rows(args.cost_rounds, args.cost_steps)
    if args.framework_steps:
        framework_rows(args.framework_steps, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
