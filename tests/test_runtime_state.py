"""The monitor across a restart (state_dict / load_state_dict) and its opt-in actions
(on_alert="raise", skip_list, spike_score), through the decorator. The framework callbacks save
the same state in their checkpoints: tests/test_runtime_lightning.py, test_runtime_transformers.py."""

import json
import logging

import pytest
import torch
from torch import nn

from training_profiler import watch_training
from training_profiler.runtime import TrainingAlertError, TrainingMonitor

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def _batches(steps, spikes=()):
    """One input batch per step (1-based); inputs x30 at the ``spikes`` steps."""
    g = torch.Generator().manual_seed(0)
    return {i: torch.randn(32, 8, generator=g) * (30.0 if i in spikes else 1.0) for i in range(1, steps + 1)}


def _step(model, opt, x):
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    return loss.detach()


def _run(monitor, model, opt, batches, first, last):
    step = monitor(_step)
    for i in range(first, last + 1):
        step(model, opt, batches[i])


def _alert_keys(monitor):
    return [(a.step, a.metric, a.kind, a.message) for a in monitor.alerts]


def test_a_resumed_run_alerts_on_a_spike_ten_steps_after_the_restart_without_a_second_warmup():
    batches = _batches(70, spikes={70})
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    first = TrainingMonitor(warmup_steps=40)
    _run(first, model, opt, batches, 1, 60)
    state = json.loads(json.dumps(first.state_dict()))  # it is plain JSON data
    assert state["step_count"] == 60 and len(state["history"]) == 60 and state["alerts"] == []

    resumed = TrainingMonitor(warmup_steps=40)
    resumed.load_state_dict(state)  # before the model is known: applied at the first step
    fresh = TrainingMonitor(warmup_steps=40)
    for monitor in (resumed, fresh):
        run_model = _model()
        run_model.load_state_dict(model.state_dict())
        run_opt = torch.optim.SGD(run_model.parameters(), lr=0.001)
        _run(monitor, run_model, run_opt, batches, 61, 70)
    assert [(a.step, a.metric, a.kind) for a in resumed.alerts] == [(70, "loss", "spike"), (70, "grad_norm", "spike")]
    assert resumed.step_count == 70 and [r["step"] for r in resumed.history][:2] == [1, 2]
    assert fresh.alerts == [] and fresh.step_count == 10  # 10 steps: still warming up


def test_a_resumed_run_judges_every_later_step_as_the_uninterrupted_run_does():
    batches = _batches(120, spikes={75, 110})
    whole_model = _model()
    whole = TrainingMonitor(warmup_steps=20, alert_window=10)
    _run(whole, whole_model, torch.optim.SGD(whole_model.parameters(), lr=0.001), batches, 1, 120)

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    before = TrainingMonitor(warmup_steps=20, alert_window=10)
    _run(before, model, opt, batches, 1, 57)
    after = TrainingMonitor(model, opt, warmup_steps=20, alert_window=10)
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))
    _run(after, model, opt, batches, 58, 120)

    assert [a.step for a in whole.alerts] == [75, 75, 110, 110]
    assert _alert_keys(after) == _alert_keys(whole)
    assert after.history[-50:] == whole.history[-50:]
    assert after.spike_score == whole.spike_score == pytest.approx(1000 * 2 / 120)


def test_load_state_dict_refuses_a_state_of_another_model_or_no_state_at_all():
    model = _model()
    monitor = TrainingMonitor(model, warmup_steps=10)
    other = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 4), nn.Linear(4, 1))
    saved = TrainingMonitor(other, warmup_steps=10)
    saved.step(other(torch.ones(2, 8)).sum())
    with pytest.raises(ValueError, match="saved for a model with 3 layers .* watches 2"):
        monitor.load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match="not a monitor state"):
        monitor.load_state_dict({"step": 3})
    with pytest.raises(ValueError, match="version 99 is not supported"):
        monitor.load_state_dict({**saved.state_dict(), "version": 99})


def test_a_state_for_another_model_loaded_before_the_first_step_is_dropped_with_a_warning(caplog):
    other = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 4), nn.Linear(4, 1))
    saved = TrainingMonitor(other, warmup_steps=10)
    saved.step(other(torch.ones(2, 8)).sum())
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    monitor = TrainingMonitor(warmup_steps=10)
    monitor.load_state_dict(saved.state_dict())
    with caplog.at_level(logging.WARNING, logger="training_profiler"):
        _run(monitor, model, opt, _batches(3), 1, 3)  # training goes on
    assert monitor.step_count == 3
    assert any("saved monitor state was not restored" in r.getMessage() for r in caplog.records)


def test_on_alert_raise_stops_training_when_the_alert_is_handed_out():
    batches = _batches(40, spikes={25})
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    step = watch_training(warmup_steps=20, on_alert="raise")(_step)
    done = []
    with pytest.raises(TrainingAlertError, match=r"on_alert='raise': \[ALERT\] Step 25 \| loss: 83.9") as info:
        for i in range(1, 41):
            step(model, opt, batches[i])
            done.append(i)
    assert info.value.alert.step == 25 and info.value.alert.kind == "spike"
    assert done[-1] == 29  # judged with the batch of steps 21-30: step 30 raised
    assert step.monitor.alerts[0] is info.value.alert


def test_on_alert_must_be_a_callable_or_raise():
    with pytest.raises(ValueError, match="on_alert='stop': use on_alert='raise' or a callable"):
        TrainingMonitor(on_alert="stop")
    with pytest.raises(TypeError, match="skip_list must be a file path, got int"):
        TrainingMonitor(skip_list=3)


def test_skip_list_records_the_steps_whose_batch_looked_anomalous(tmp_path):
    path = tmp_path / "skip_batches.json"
    path.write_text("[4]\n")  # from an earlier run of the same job: kept
    batches = _batches(60, spikes={30, 45})
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    monitor = TrainingMonitor(warmup_steps=20, alert_window=5, skip_list=path)
    _run(monitor, model, opt, batches, 1, 60)
    assert [a.step for a in monitor.alerts] == [30, 30, 45, 45]
    assert json.loads(path.read_text()) == [4, 30, 45]
    assert monitor.spike_score == pytest.approx(1000 * 2 / 60)
