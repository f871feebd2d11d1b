"""Fault injection: the monitor never raises into training and never lies.

Each test breaks one thing the monitor depends on (a host transfer, the user's on_alert callback,
the host-side decoding during flush/close) or feeds it a run whose log used to be wrong (a
non-finite value reported with "Status: OK", alerts logged out of step order), and checks that
the training loop sees nothing, the error is reported once on the ``training_profiler`` logger,
and what the monitor reports is true. The distributed cases are in test_runtime_monitor_ddp.py.
"""

import logging
import math

import pytest
import torch
from torch import nn

from training_profiler import watch_training
from training_profiler.runtime import TrainingMonitor
from training_profiler.runtime.device_stats import HostMirror, StatsBuffer


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)


def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def _messages(caplog, needle):
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def _train(step_fn, steps, **kwargs):
    """Run ``steps`` steps of a tiny regression; the step number goes to ``step_fn`` as ``i``."""
    model = _tiny()
    g = torch.Generator().manual_seed(0)
    for i in range(1, steps + 1):
        step_fn(model, torch.randn(32, 8, generator=g), i, **kwargs)
    return model


def _step_fn(nan_at=(), spikes=()):
    """A train step of ``_train``: inputs x30 at the ``spikes`` steps, a NaN loss returned at ``nan_at``."""
    opt_holder = {}

    def train_step(model, x, i):
        opt = opt_holder.setdefault("opt", torch.optim.SGD(model.parameters(), lr=0.001))
        opt.zero_grad()
        loss = (model(x) * (30.0 if i in spikes else 1.0)).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.detach() * (math.nan if i in nan_at else 1.0)  # a NaN loss, the weights stay fine

    return train_step


def test_a_failed_host_transfer_stops_the_monitor_but_never_the_training(monkeypatch, caplog):
    # the second periodic copy to the host fails (a CUDA error, say); the buffer must not be
    # indexed past its end afterwards, and the steps judged before the failure stay
    calls = {"n": 0}
    original = HostMirror.copy

    def flaky_copy(self, key, src, dst_index):
        if src.dim() == 2 and src.shape[1] > 2:  # the whole-buffer copy, not the per-step fast copy
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, key, src, dst_index)

    monkeypatch.setattr(HostMirror, "copy", flaky_copy)
    train_step = watch_training(_step_fn(), warmup_steps=10, transfer_every=5)
    with caplog.at_level(logging.WARNING, logger="training_profiler"):
        _train(train_step, 30)  # raised IndexError at step 11 before the fix
        history = train_step.monitor.history
    monitor = train_step.monitor
    assert monitor.step_count == 30
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5]
    errors = _messages(caplog, "internal error")
    assert len(errors) == 1 and "illegal memory access" in errors[0] and "training continues" in errors[0]
    monitor.close()
    assert not any(m._forward_hooks for m in monitor.model.modules())


def test_an_on_alert_that_raises_reaches_neither_training_nor_detection(caplog):
    received = []

    def on_alert(alert):
        received.append((alert.step, alert.metric, alert.kind))
        raise ValueError("my dashboard is down")

    train_step = watch_training(_step_fn(nan_at={60}, spikes={45, 130}), warmup_steps=20, on_alert=on_alert)
    with caplog.at_level(logging.WARNING, logger="training_profiler"):
        _train(train_step, 150)  # the NaN alert's callback raised into the step before the fix
        alerts = [(a.step, a.metric, a.kind) for a in train_step.monitor.alerts]
    # detection went on after the first failing callback (before the fix it switched detection off)
    assert (45, "grad_norm", "spike") in alerts and (130, "grad_norm", "spike") in alerts
    assert (60, "loss", "nonfinite") in alerts
    assert received == alerts  # every alert still reached the callback, in step order
    failures = _messages(caplog, "on_alert")
    assert len(failures) == 1 and "ValueError: my dashboard is down" in failures[0]
    assert "monitoring goes on" in failures[0]


def test_on_alert_may_read_the_monitor_it_belongs_to():
    seen = []
    train_step = watch_training(_step_fn(spikes={45}), warmup_steps=20,
                                on_alert=lambda alert: seen.append(len(train_step.monitor.alerts)))
    _train(train_step, 50)
    grad = [a for a in train_step.monitor.alerts if a.metric == "grad_norm"]
    assert [a.step for a in grad] == [45]
    assert seen[-1] == len(train_step.monitor.alerts)  # the alerts so far, this one included


def test_an_error_while_flushing_on_close_never_masks_the_users_exception(monkeypatch, caplog):
    def broken_record(self, *args):
        raise RuntimeError("decoding failed")

    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with caplog.at_level(logging.WARNING, logger="training_profiler"):
        with pytest.raises(KeyError, match="bad batch"):
            with watch_training(model=model, optimizer=opt, warmup_steps=10, precision_every=1) as monitor:
                for i in range(3):
                    loss = model(torch.randn(4, 8)).pow(2).mean()
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                    monitor.step(loss)
                monkeypatch.setattr(StatsBuffer, "record", broken_record)  # the flush in close() fails
                model(torch.randn(4, 8))
                raise KeyError("bad batch")
        assert monitor.history == []  # flushing again is quiet too
    assert not any(m._forward_hooks for m in model.modules())  # close() still removed the hooks
    errors = _messages(caplog, "internal error")
    assert len(errors) == 1 and "RuntimeError: decoding failed" in errors[0]


def test_flush_errors_stay_inside_the_monitor(monkeypatch, caplog):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = TrainingMonitor(model, opt, warmup_steps=10)
    with monitor:
        for _ in range(3):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            opt.step()
            monitor.step()
        monkeypatch.setattr(HostMirror, "wait", lambda self, key: (_ for _ in ()).throw(RuntimeError("sync failed")))
        monkeypatch.setattr(HostMirror, "ready", lambda self, key: False)
        with caplog.at_level(logging.WARNING, logger="training_profiler"):
            monitor.flush()
            monitor.flush()
    assert len(_messages(caplog, "internal error")) == 1


def test_a_non_finite_value_is_never_reported_with_status_ok(caplog):
    opt_holder = {}

    def train_step(model, x, i):
        opt = opt_holder.setdefault("opt", torch.optim.SGD(model.parameters(), lr=0.001))
        opt.zero_grad()
        loss = model(x).pow(2).mean() * (math.nan if i >= 12 else 1.0)  # NaN from step 12 on, for good
        loss.backward()
        opt.step()
        return loss

    train_step = watch_training(train_step, warmup_steps=10, log_every=80, alert_window=50)
    with caplog.at_level(logging.INFO, logger="training_profiler"):
        _train(train_step, 80)
        train_step.monitor.close()
    status = _messages(caplog, "[Monitor] Step 80 ")
    assert len(status) == 1
    assert status[0].startswith("[Monitor] Step 80 | grad_norm: nan (baseline: ")
    assert status[0].endswith("| Status: NON-FINITE")  # was "Status: OK": the last alert was 68 steps ago


def test_alerts_are_logged_and_handed_out_in_step_order(caplog):
    # step 55's spike is judged when its batch (51-60) reaches the host; step 57's NaN loss is
    # seen at once: it used to be logged first
    received = []
    train_step = watch_training(_step_fn(nan_at={57}, spikes={55}), warmup_steps=20,
                                transfer_every=10, on_alert=lambda a: received.append(a.step))
    with caplog.at_level(logging.WARNING, logger="training_profiler"):
        _train(train_step, 58)
        logged = [int(m.split()[2]) for m in _messages(caplog, "[ALERT]")]  # before any flush
    assert 57 in logged and 55 in logged  # the NaN is still reported at its own step: no waiting
    assert logged == sorted(logged) and received == logged


def test_gradients_measured_at_the_end_of_a_step_follow_the_precision_cadence():
    # no optimizer hook (the monitor reads the gradients in step()): the fp16 gradient fractions
    # belong to precision steps 1, 6, 11 like every other precision statistic
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)).half()
    with watch_training(model=model, warmup_steps=10, precision_every=5) as monitor:
        for _ in range(12):
            model(torch.randn(4, 8).half()).float().pow(2).mean().backward()
            monitor.step()
            model.zero_grad()
    assert [r["step"] for r in monitor.history if "grad_underflow" in r] == [1, 6, 11]


def test_reading_alerts_in_the_middle_of_a_step_does_not_mix_in_stale_values():
    # context-manager mode: a step is always in progress between step() calls; reading
    # monitor.alerts ships the finished steps, and the step in progress must start from a clean row
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch_training(model=model, optimizer=opt, warmup_steps=10, precision_every=3) as monitor:
        for step in range(1, 7):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            monitor.step()
            if step == 2:
                assert monitor.alerts == []  # flushes steps 1-2 while step 3 is in progress
    history = monitor.history
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in history if "update_ratio" in r] == [1, 4]  # precision steps only
