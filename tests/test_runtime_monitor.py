"""@watch_training on real (small, seeded, CPU) training runs: the failure museum, the host-sync
budget, the API surface (decorator, context manager, export, plot) and never breaking training."""

import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from training_profiler import watch_training
from training_profiler.runtime import Alert, TrainingMonitor
from training_profiler.runtime.device_stats import StatsBuffer

MUSEUM = Path(__file__).resolve().parent.parent / "examples" / "failure_museum" / "runtime"


def _museum(name):
    spec = importlib.util.spec_from_file_location(f"museum_{name}", MUSEUM / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: more threads only fight over the 2 shared cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


# -- acceptance: the failure museum ---------------------------------------------------------------
def test_lr_too_high_alerts_on_grad_norm_well_before_the_nan():
    museum = _museum("lr_too_high")
    monitor = museum.run(steps=400, high_lr=2.0)
    nan_step = museum.first_nonfinite_step(monitor)
    assert nan_step is not None and nan_step > 330
    alerts = monitor.alerts
    first = alerts[0]
    assert first.metric == "grad_norm" and first.kind in ("spike", "rising", "divergence")
    assert first.step <= nan_step - 10
    assert "grad_norm" in first.message and first.message.startswith(f"[ALERT] Step {first.step} | grad_norm:")
    assert "lower the learning rate" in first.message
    assert {(a.metric, a.kind) for a in alerts if a.step >= nan_step - 5} >= {("loss", "nonfinite")}


def test_lr_too_high_at_a_sane_lr_is_silent_for_2000_steps():
    monitor = _museum("lr_too_high").run(steps=2000)
    assert len(monitor.history) == 2000
    assert monitor.alerts == []


def test_nan_within_warmup_still_alerts_at_its_step():
    museum = _museum("lr_too_high")
    monitor = museum.run(steps=40, lr=10.0)
    nan_step = museum.first_nonfinite_step(monitor)
    assert nan_step is not None and nan_step < 100  # inside the warm-up
    loss_alerts = [a for a in monitor.alerts if a.metric == "loss"]
    assert [(a.kind, a.step) for a in loss_alerts] == [("nonfinite", nan_step)]
    assert "no baseline yet" in loss_alerts[0].message


def test_deep_plain_mlp_vanishing_alert_names_the_early_layers():
    monitor = _museum("deep_plain_mlp").run(steps=12)
    vanishing = [a for a in monitor.alerts if a.kind == "vanishing"]
    assert len(vanishing) == 1
    alert = vanishing[0]
    assert alert.step == 1 and alert.layer == "0"  # the first Linear of the Sequential
    assert alert.value < 1e-7
    assert "Layer '0' grad_norm" in alert.message and "residual" in alert.message
    norms = monitor.history[0]["layer_grad_norms"]
    assert len(norms) == 100 and norms[-1] > 1e-3 > 1e-7 > norms[0]


def test_fp16_activation_overflow_alert_names_the_layer_and_bf16_is_clean():
    museum = _museum("fp16_overflow")
    monitor = museum.run(steps=6)
    overflow = [a for a in monitor.alerts if a.kind == "overflow"]
    assert [(a.step, a.layer, a.metric) for a in overflow] == [(1, "0", "activation_overflow")]
    assert overflow[0].value > 0.5  # most of layer 0's outputs are beyond 32752 or Inf
    assert "bf16" in overflow[0].advice
    assert museum.run(steps=6, dtype=torch.bfloat16).alerts == []


# -- cost: no host sync in the per-step path ------------------------------------------------------
class _CountSyncs(TorchDispatchMode):
    """Counts the ops that force a device->host sync on a GPU: reading a scalar (.item(), bool(),
    .tolist() of elements) and copies from a device to the CPU."""

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs.append("item" if args[0].device.type != "cpu" else "item of a cpu tensor")
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            dst = kwargs.get("device") if func is torch.ops.aten._to_copy.default else args[0].device
            src = args[0] if func is torch.ops.aten._to_copy.default else args[1]
            if dst is not None and torch.device(dst).type == "cpu" and src.device.type != "cpu":
                self.syncs.append("copy to cpu")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("host_scalars", [False, True])  # False: the path of a GPU buffer, run on CPU
def test_no_synchronizing_call_in_the_per_step_path(monkeypatch, host_scalars):
    monkeypatch.setattr(StatsBuffer, "host_scalars", host_scalars)
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")

    @watch_training(scaler=scaler, warmup_steps=10, transfer_every=10, precision_every=7)
    def step(model, x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        scaler.scale(loss)  # creates the scale tensor the monitor reads; scaler.step() would sync itself
        loss.backward()
        opt.step()
        return loss

    x, y = torch.randn(16, 8), torch.randn(16, 1)
    for _ in range(5):
        step(model, x, y)
    calls = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            calls.append(_name if self.device.type != "cpu" else f"{_name} of a cpu tensor")
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    with _CountSyncs() as mode:
        for _ in range(30):  # crosses three periodic reads (steps 10, 20, 30)
            step(model, x, y)
    monkeypatch.undo()
    # a buffer on a GPU takes the norms and the loss with device ops: nothing is read; on CPU they
    # are read as Python floats (memory reads): the loss and the 4 parameters' norms per step
    assert calls == mode.syncs == (["item of a cpu tensor"] * 5 * 30 if host_scalars else [])
    history = step.monitor.history
    assert [r["step"] for r in history][-3:] == [33, 34, 35]
    assert history[-1]["loss_scale"] == 65536.0
    assert math.isfinite(history[-1]["grad_norm"])


class _TorchCalls(TorchFunctionMode):
    """The torch functions and tensor methods called, by name (attribute reads and writes left out)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name not in ("__get__", "__set__"):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("host_scalars", [False, True])  # False: the path of a GPU buffer, run on CPU
def test_an_ordinary_step_runs_one_norm_and_one_stack(monkeypatch, host_scalars):
    # the monitor's whole per-step device work: _foreach_norm over the gradients, the norms stacked
    # into a preallocated row (a view of it) at once and the loss copied into it; on CPU the norms
    # and the loss are read as Python floats instead; per-layer and global norms, NaN/Inf flags
    # and the detectors run on the host, for a batch of rows, every transfer_every steps
    monkeypatch.setattr(StatsBuffer, "host_scalars", host_scalars)
    model = _tiny()
    grads = [torch.randn_like(p) for p in model.parameters()]

    class NoStep(torch.optim.Optimizer):  # the step's own work stays out of the record
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            pass

    opt = NoStep(model.parameters())
    loss = torch.tensor(0.5)

    @watch_training(warmup_steps=10, transfer_every=10, precision_every=50)
    def step(model, opt):
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        opt.step()
        return loss

    step(model, opt)  # step 1: a precision step
    for n in range(2, 10):  # ordinary steps (10 ships the batch to the host)
        with _TorchCalls() as mode:
            step(model, opt)
        device_ops = [c for c in mode.calls if not c.startswith(("_record_function", "numel", "dim", "is_floating_point"))]
        expected = ["_foreach_norm", *["item"] * 5] if host_scalars else ["_foreach_norm", "stack", "detach", "copy_"]
        assert device_ops == expected, n
    history = step.monitor.history
    assert [r["step"] for r in history] == list(range(1, 10))
    expected = torch.nn.utils.get_total_norm(grads).item()
    assert all(r["grad_norm"] == pytest.approx(expected, rel=1e-6) and r["loss"] == 0.5 for r in history)
    assert all(len(r["layer_grad_norms"]) == 2 for r in history)
    assert "update_ratio" not in history[1]


# -- what is measured -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: norms without narrowing to fp32
def test_context_manager_records_exact_norms_even_when_grads_are_cleared_after_step(dtype):
    model = _tiny().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with watch_training(model=model, optimizer=opt, warmup_steps=10, precision_every=5) as monitor:
        for i in range(12):
            x = torch.randn(16, 8, generator=torch.Generator().manual_seed(i), dtype=dtype)
            loss = model(x).pow(2).mean()
            loss.backward()
            first = model[0]
            layer0 = math.hypot(first.weight.grad.norm().item(), first.bias.grad.norm().item())
            total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
            opt.step()
            # plain SGD: |dw| = lr * |g|, so the update ratio of layer "0" is lr * |g| / |w after the step|
            w_after = math.hypot(first.weight.norm().item(), first.bias.norm().item())
            expected.append((loss.item(), total, layer0, 0.01 * layer0 / w_after))
            opt.zero_grad(set_to_none=True)  # gradients gone: the optimizer pre-hook saw them
            monitor.step(loss)
    history = monitor.history
    assert len(history) == 12
    for rec, (loss, total, layer0, ratio) in zip(history, expected):
        assert rec["loss"] == pytest.approx(loss, rel=1e-6)
        assert rec["grad_norm"] == pytest.approx(total, rel=1e-5)
        assert rec["layer_grad_norms"][0] == pytest.approx(layer0, rel=1e-5)  # weight and bias together
        if rec["step"] in (1, 6, 11):  # precision steps: 1, 1 + precision_every, ...
            assert rec["update_ratio"][0] == pytest.approx(ratio, rel=1e-4)
        else:
            assert "update_ratio" not in rec
    assert monitor.layers == ["0", "2"]


def test_framework_hooks_drive_the_monitor_without_the_decorator():
    # what a Lightning / Hugging Face callback does: begin_step at batch start, observe_step after
    # backward; the first observe_step attaches the model it is given
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = TrainingMonitor(warmup_steps=10, precision_every=2)
    expected = []
    for i in range(4):
        monitor.begin_step()  # a no-op until the model is known
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(i))
        loss = model(x).pow(2).mean()
        loss.backward()
        expected.append((loss.item(), torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()))
        opt.step()
        monitor.observe_step({"loss": loss}, model=model, optimizer=opt)
        opt.zero_grad(set_to_none=True)
    history = monitor.history
    assert monitor.model is model and monitor.optimizer is opt and monitor.layers == ["0", "2"]
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    for rec, (loss, norm) in zip(history, expected):
        assert rec["loss"] == pytest.approx(loss, rel=1e-6)
        assert rec["grad_norm"] == pytest.approx(norm, rel=1e-5)
    # step 3 is a precision step begun after attaching: its optimizer step was seen
    assert "update_ratio" in history[2] and "update_ratio" not in history[1]
    monitor.close()
    with pytest.raises(ValueError, match=r"no model yet.*observe_step\(loss, model=model\)"):
        TrainingMonitor().observe_step(1.0)


def test_hooks_are_removed_on_close():
    from torch.optim import optimizer as optim_module

    pre, post = len(optim_module._global_optimizer_pre_hooks), len(optim_module._global_optimizer_post_hooks)
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = TrainingMonitor(model, opt, precision_every=1, warmup_steps=10)
    assert len(optim_module._global_optimizer_pre_hooks) == pre + 1
    with monitor:
        model(torch.randn(4, 8)).sum().backward()
        assert any(m._forward_hooks for m in model.modules())  # precision step: hooks on
        opt.step()
        monitor.step()
    assert not any(m._forward_hooks for m in model.modules())
    assert len(optim_module._global_optimizer_pre_hooks) == pre
    assert len(optim_module._global_optimizer_post_hooks) == post


def test_global_optimizer_is_found_when_it_steps():
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    @watch_training
    def train_step(model, x):
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"loss": loss}

    train_step(model, torch.randn(4, 8))
    assert train_step.monitor.optimizer is opt
    assert math.isfinite(train_step.monitor.history[0]["grad_norm"])


def test_grad_scaler_backoff_is_normal_but_repeated_skips_alert():
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    poison = {150, 300, 301, 302}

    @watch_training(warmup_steps=20)
    def train_step(model, optimizer, scaler, x, i):
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        if i in poison:  # an fp16-style overflow: Inf gradients, the scaler skips and backs off
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    g = torch.Generator().manual_seed(0)
    for i in range(1, 321):
        train_step(model, opt, scaler, torch.randn(16, 8, generator=g), i)
    monitor = train_step.monitor
    assert monitor.scaler is scaler
    kinds = [(a.step, a.kind) for a in monitor.alerts if a.metric != "loss"]
    assert kinds == [(302, "skipped_steps")]  # step 150 alone (one backoff) is not an alert
    assert monitor.history[302]["loss_scale"] == 1024.0 / 16
    assert "bf16" in monitor.alerts[-1].advice


# -- output -----------------------------------------------------------------------------------------
def test_log_lines_have_the_seed_format_and_on_alert_is_called(caplog):
    received = []
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)

    @watch_training(warmup_steps=20, log_every=30, on_alert=received.append)
    def train_step(model, x, scale):
        opt.zero_grad()
        loss = (model(x) * scale).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    g = torch.Generator().manual_seed(0)
    with caplog.at_level(logging.INFO, logger="training_profiler"):
        for i in range(1, 61):
            train_step(model, torch.randn(32, 8, generator=g), 30.0 if i == 45 else 1.0)
        train_step.monitor.close()
    lines = [r.getMessage() for r in caplog.records]
    status = [line for line in lines if line.startswith("[Monitor] Step 30 ")]
    assert len(status) == 1
    assert " | grad_norm: " in status[0] and "(baseline: " in status[0] and status[0].endswith("| Status: OK")
    grad_alert = [a for a in received if a.metric == "grad_norm"]
    assert len(grad_alert) == 1 and isinstance(grad_alert[0], Alert)
    assert grad_alert[0].step == 45 and grad_alert[0].kind == "spike"
    assert grad_alert[0].value == pytest.approx(train_step.monitor.history[44]["grad_norm"])
    assert f"Deviation: {grad_alert[0].deviation:.0f}σ" in grad_alert[0].message
    assert grad_alert[0].message in lines


def test_export_history_jsonl_and_csv(tmp_path):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch_training(model=model, optimizer=opt, warmup_steps=10) as monitor:
        for _ in range(5):
            loss = model(torch.randn(4, 8)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            monitor.step(loss)
    rows = [json.loads(line) for line in monitor.export_history(tmp_path / "h.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["loss"] == pytest.approx(monitor.history[2]["loss"])
    csv_lines = monitor.export_history(tmp_path / "h.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert header[:4] == ["step", "loss", "grad_norm", "loss_scale"]
    assert "layer_grad_norms/0" in header and "layer_grad_norms/2" in header
    assert len(csv_lines) == 6
    with pytest.raises(ValueError, match=r"'\.txt'.*use \.jsonl or \.csv"):
        monitor.export_history(tmp_path / "h.txt")


def test_gradient_flow_plot_png_or_clear_error(tmp_path):
    monitor = _museum("deep_plain_mlp").run(steps=4, depth=10)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install 'training-profiler\[plot\]'"):
            monitor.plot_gradient_flow(tmp_path / "flow.png")
    else:
        path = monitor.plot_gradient_flow(tmp_path / "flow.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- robustness -------------------------------------------------------------------------------------
def test_internal_error_is_logged_once_and_only_that_metric_is_disabled(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(torch, "_foreach_norm", broken)
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    @watch_training(warmup_steps=10)
    def train_step(model, x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    with caplog.at_level(logging.WARNING, logger="training_profiler"):
        for _ in range(15):
            train_step(model, torch.randn(4, 8))
        history = train_step.monitor.history
    errors = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    # both metrics that use the broken op are switched off, each with one message
    assert sorted(e.split("computing ")[1].split(" ")[0] for e in errors) == ["grad_norm", "update_ratio"]
    assert all("RuntimeError: boom" in e and "training continues" in e for e in errors)
    assert len(history) == 15 and all("loss" in r and "grad_norm" not in r for r in history)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="warmup_steps=0 must be a positive integer"):
        watch_training(warmup_steps=0)
    with pytest.raises(ValueError, match="warmup_steps=5 is too short"):
        watch_training(warmup_steps=5)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        watch_training(model="resnet")
    with pytest.raises(ValueError, match="needs the model"):
        with watch_training():
            pass

    @watch_training
    def no_model(x):
        return x

    with pytest.raises(ValueError, match=r"no torch.nn.Module among the train step's arguments.*model=model"):
        no_model(torch.ones(1))


def test_torch_compiled_model_gets_gradient_statistics_without_activation_hooks():
    model = _tiny()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    @watch_training(warmup_steps=10, precision_every=1)
    def train_step(model, x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    x = torch.randn(4, 8)
    for _ in range(3):
        train_step(compiled, x)
        assert not any(m._forward_hooks for m in model.modules())
    monitor = train_step.monitor
    assert monitor.layers == ["0", "2"]  # the "_orig_mod." prefix is dropped
    history = monitor.history
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert history[-1]["grad_norm"] == pytest.approx(expected, rel=1e-5)
    assert "activation_overflow" not in history[0]


def test_fp16_activation_underflow_against_its_own_baseline():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Linear(16, 1, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    @watch_training(warmup_steps=10, precision_every=5)
    def train_step(model, x):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = out.float().pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    g = torch.Generator().manual_seed(0)
    for step in range(1, 51):
        x = torch.randn(32, 8, generator=g)
        train_step(model, x * (1e-6 if step >= 41 else 1.0))  # inputs rescaled: fp16 subnormals
    alerts = [a for a in train_step.monitor.alerts if a.kind == "underflow"]
    assert [(a.step, a.layer, a.metric) for a in alerts] == [(41, "0", "activation_underflow")]
    assert alerts[0].value > 0.5 and alerts[0].baseline < 0.01
    assert alerts[0].message.startswith("[ALERT] Step 41 | Layer '0' underflow_ratio: ")
    assert "(baseline: " in alerts[0].message and "loss scaling" in alerts[0].advice


def test_grad_norm_alert_names_the_first_layer_that_left_its_baseline():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Tanh(), nn.Linear(8, 8, bias=False), nn.Tanh(),
                          nn.Linear(8, 1, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = {"n": 0}
    # layer "2" (a small part of the global norm) starts creeping up at step 40; layer "0" jumps
    # 100x at step 46 and triggers the global alert: the alert names "2", which left first
    model[2].weight.register_hook(lambda g: g * 0.1 * 1.25 ** max(0, step["n"] - 39))
    model[0].weight.register_hook(lambda g: g * (100.0 if step["n"] >= 46 else 1.0))

    @watch_training(warmup_steps=20)
    def train_step(model, x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    g = torch.Generator().manual_seed(0)
    for n in range(1, 61):
        step["n"] = n
        train_step(model, torch.randn(64, 8, generator=g))
    grad_alerts = [a for a in train_step.monitor.alerts if a.metric == "grad_norm"]
    assert grad_alerts[0].step == 46 and grad_alerts[0].layer == "2"
    assert "first layer off its baseline: '2'" in grad_alerts[0].message


def test_an_error_in_the_step_propagates_and_leaves_no_hooks_behind():
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    @watch_training(warmup_steps=10, precision_every=1)
    def train_step(model, x, fail):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        if fail:
            raise KeyError("bad batch")
        loss.backward()
        opt.step()
        return loss

    train_step(model, torch.randn(4, 8), False)
    with pytest.raises(KeyError, match="bad batch"):
        train_step(model, torch.randn(4, 8), True)
    assert not any(m._forward_hooks for m in model.modules())
    train_step(model, torch.randn(4, 8), False)
    assert [r["step"] for r in train_step.monitor.history] == [1, 2]


def test_a_layer_without_gradients_is_not_measured_rather_than_vanishing():
    torch.manual_seed(0)
    model = nn.ModuleDict({"used": nn.Linear(8, 8), "unused": nn.Linear(8, 8), "head": nn.Linear(8, 1)})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    @watch_training(model=model, warmup_steps=10)
    def train_step(x):
        opt.zero_grad(set_to_none=True)
        loss = model["head"](model["used"](x)).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    for _ in range(12):
        train_step(torch.randn(4, 8))
    monitor = train_step.monitor
    assert monitor.layers == ["used", "unused", "head"]
    norms = monitor.history[-1]["layer_grad_norms"]
    assert norms[0] > 0 and math.isnan(norms[1]) and norms[2] > 0
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item()
    assert monitor.history[-1]["grad_norm"] == pytest.approx(expected, rel=1e-5)
    assert monitor.alerts == []


class _LaggingTransfer:
    """Stands in for the CUDA path of device_stats.HostMirror: a copy lands in host memory only `lag`
    steps after it was issued (as if the GPU ran behind the host), or when waited for."""

    cuda = True

    def __init__(self, device_buf, clock, lag):
        self.host = torch.full(device_buf.shape, -1.0)
        self.view = self.host.numpy()
        self.clock, self.lag, self.inflight = clock, lag, {}

    def copy(self, key, src, dst_index):
        self.inflight[key] = (dst_index, src.clone(), self.clock() + self.lag)

    def _land(self, key):
        dst_index, data, _ = self.inflight.pop(key)
        self.host[dst_index] = data

    def ready(self, key):
        if key in self.inflight and self.inflight[key][2] <= self.clock():
            self._land(key)
        return key not in self.inflight

    def wait(self, key):
        if key in self.inflight:
            self._land(key)


@pytest.mark.parametrize("lag", [3, 7])  # 7: the device is further behind than one transfer batch
def test_async_host_copies_report_nan_with_its_own_step_once_the_device_catches_up(lag):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = TrainingMonitor(model, opt, warmup_steps=10, transfer_every=5)
    clock = lambda: monitor.step_count  # noqa: E731
    stats = monitor._stats
    stats.fast = _LaggingTransfer(stats.fast.host, clock, lag)
    stats.transfer = _LaggingTransfer(stats.buf, clock, lag)
    stats.host_rows = None  # as on a GPU: the rows are written with device ops
    losses = []
    with monitor:
        for step in range(1, 41):
            loss = model(torch.randn(4, 8)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            loss = loss.detach() * (math.nan if step == 25 else 1.0)
            losses.append(loss.item())
            monitor.step(loss)
            nan_alerts = [a for a in monitor._alerts if a.kind == "nonfinite"]
            if lag != 3:
                continue
            if step < 28:
                assert nan_alerts == []  # the copy of step 25 has not landed yet
            elif step == 28:  # landed: the steps before it are judged first (one sync), in step order
                assert [(a.step, a.metric) for a in nan_alerts] == [(25, "loss")]
                assert [r["step"] for r in monitor._history] == list(range(1, 29))
            if step == 35:  # back to periodic batches: the copy of 29-33 lands at step 36
                assert [r["step"] for r in monitor._history] == list(range(1, 29))
            if step == 36:
                assert [r["step"] for r in monitor._history] == list(range(1, 34))
    history = monitor.history
    assert [(a.step, a.metric) for a in monitor.alerts if a.kind == "nonfinite"] == [(25, "loss")]
    assert [r["step"] for r in history] == list(range(1, 41))
    for rec, loss in zip(history, losses):
        assert rec["loss"] == pytest.approx(loss, rel=1e-6, nan_ok=True)


def test_a_loss_that_goes_negative_is_not_judged_in_log_space_but_still_nan_checked():
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)

    @watch_training(warmup_steps=10)
    def train_step(model, x, step):
        opt.zero_grad()
        out = model(x).mean()
        loss = out - 5.0 if step < 30 else out + 5.0  # e.g. a log-likelihood: negative, then positive
        loss.backward()
        opt.step()
        return loss * (math.nan if step == 40 else 1.0)

    g = torch.Generator().manual_seed(0)
    for step in range(1, 46):
        train_step(model, torch.randn(8, 8, generator=g), step)
    assert [(a.step, a.metric, a.kind) for a in train_step.monitor.alerts] == [(40, "loss", "nonfinite")]


def test_pure_fp16_model_gradient_underflow_alerts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).half()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    @watch_training(warmup_steps=10, precision_every=5)
    def train_step(model, x, scale):
        opt.zero_grad()
        loss = model(x).float().pow(2).mean() * scale
        loss.backward()
        opt.step()
        return loss

    g = torch.Generator().manual_seed(0)
    # precision steps 1 and 6; tiny gradients from step 6 on. At scale 1.0, 3 of the first weight's 128
    # gradient values (3 of all 161) would already be subnormal: 1.9% of the gradient, an alert
    for step in range(1, 11):
        train_step(model, torch.randn(32, 8, generator=g).half(), 1e-4 if step >= 6 else 4.0)
    monitor = train_step.monitor
    history = monitor.history
    assert history[0]["grad_underflow"] == 0.0 and history[0]["grad_overflow"] == 0.0
    assert "grad_underflow" not in history[1]  # only on precision steps
    alerts = [(a.step, a.metric, a.kind) for a in monitor.alerts]
    assert alerts == [(6, "gradient_underflow", "underflow")]
    assert history[5]["grad_underflow"] > 0.5


def test_per_layer_norms_of_a_layer_whose_parameters_are_not_adjacent():
    # "module.l.*" and "l.*" are one layer ("module" wrappers are dropped from names), with "x"
    # between them: the host groups the parameters' columns by layer before it sums them
    from training_profiler.runtime.device_stats import StatsBuffer

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Module()
            self.module.l = nn.Linear(3, 2)
            self.x = nn.Linear(2, 2)
            self.l = nn.Linear(2, 1)

    stats = StatsBuffer(Wrapped(), rows=2)
    assert stats.layers == ["l", "x"]
    block = np.zeros((1, 7), dtype=np.float32)
    block[0, 1:] = [1.0, 2.0, 3.0, 4.0, 2.0, 4.0]  # module.l.weight, .bias, x.weight, .bias, l.weight, .bias
    norms = stats.grad_norms(block)[0]
    assert norms[1:] == [5.0, 5.0]  # l: sqrt(1 + 4 + 4 + 16); x: sqrt(9 + 16)
    assert norms[0] == 50**0.5


def test_reading_the_history_inside_a_step_keeps_that_steps_norms():
    # history flushes: inside a step (after the optimizer hook wrote this step's norms into its
    # row) the row moves to the start of the buffer, and the step still records its own norms
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected, seen = [], []

    @watch_training(warmup_steps=10, transfer_every=10)
    def step(model, x):
        opt.zero_grad(set_to_none=True)
        loss = model(x).pow(2).mean()
        loss.backward()
        expected.append((loss.item(), torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()))
        opt.step()
        seen.append(len(step.monitor.history))  # a flush in the middle of the step
        return loss

    for i in range(13):
        step(model, torch.randn(16, 8, generator=torch.Generator().manual_seed(i)))
    history = step.monitor.history
    assert seen == list(range(13))  # every earlier step, not this one
    assert [r["step"] for r in history] == list(range(1, 14))
    for rec, (loss, norm) in zip(history, expected):
        assert rec["loss"] == pytest.approx(loss, rel=1e-6)
        assert rec["grad_norm"] == pytest.approx(norm, rel=1e-5)


def test_host_norms_are_float64_so_only_a_nonfinite_gradient_norm_makes_them_nonfinite():
    # a layer norm of 2e19 squares beyond float32's range: in float64 it stays 2e19; an Inf or NaN
    # gradient norm makes its layer and the global norm Inf/NaN, and nonfinite_norm reports it
    from training_profiler.runtime.device_stats import StatsBuffer

    stats = StatsBuffer(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), rows=3)
    assert stats.layers == ["0", "1"]
    block = np.array([[0.5, 2e19, 0.0, 3.0, 4.0],
                      [0.5, 1.0, math.inf, 3.0, 4.0],
                      [0.5, 1.0, 2.0, math.nan, 4.0]], dtype=np.float32)
    big, inf, nan = stats.grad_norms(block)
    layer0 = float(np.float32(2e19))
    assert big[1:] == [layer0, 5.0] and big[0] == layer0  # 25 is below half an ulp of layer0 squared
    assert inf[0] == math.inf and inf[1] == math.inf and inf[2] == 5.0
    assert math.isnan(nan[0]) and nan[1] == 5**0.5 and math.isnan(nan[2])
    assert stats.nonfinite_norm(block[0].tolist()) is None
    assert stats.nonfinite_norm(block[1].tolist()) == math.inf
    assert math.isnan(stats.nonfinite_norm(block[2].tolist()))
