"""False alarms on runs that converge: the scale-aware floor of the adaptive detector and the
relative vanishing-gradient judgement, on recorded real traces, hand-made layer norms and one
tiny real run."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training_profiler import watch_training
from training_profiler.runtime.baseline import AdaptiveDetector
from training_profiler.runtime.detectors import HostDetectors

TRACES = Path(__file__).resolve().parent / "fixtures" / "runtime" / "converged_runs.json"
pytestmark = pytest.mark.usefixtures("one_thread")


def _alerts(values, **options):
    det = AdaptiveDetector(warmup_steps=100, alert_window=50, **options)
    return [(v.step, v.kind) for i, x in enumerate(values, start=1) if (v := det.update(i, x)) and v.is_alert]


def _traces():
    return json.loads(TRACES.read_text())


# -- the scale-aware floor ------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["linear_regression", "tanh_regression"])
def test_recorded_converging_runs_raise_no_loss_or_grad_norm_alert(task):
    # recorded by bench/real_runs.py (seed 0): loss ~15 -> 1e-13 (linear) / 1e-4 (tanh); the late
    # wobbles are x10-x100 in relative terms: 11 and 12 alerts without the floor
    run = _traces()[task]
    assert run["loss"][0] > 10 and run["loss"][-1] < 1e-3
    for metric in ("loss", "grad_norm"):
        assert _alerts(run[metric]) == [], metric


def test_without_the_floor_the_same_traces_alarm():
    run = _traces()["linear_regression"]
    assert [len(_alerts(run[m], scale_floor=0.0)) for m in ("loss", "grad_norm")] == [5, 6]


def test_wobble_far_below_the_early_scale_is_not_an_anomaly_but_a_return_to_it_is():
    # warm-up at 10, then converged at 1e-10 with 100x wobbles, then back to 10 at step 900
    values = [10.0 * (1 + 0.1 * math.sin(i)) for i in range(100)]
    values += [1e-10 * (100.0 if i % 97 == 0 else 1.0) for i in range(800)]
    values += [10.0] * 20
    assert _alerts(values) == [(901, "spike")]
    # without the floor every 100x wobble at 1e-10 is a spike (the one at 877 masks the return)
    assert _alerts(values, scale_floor=0.0) == [(s, "spike") for s in range(392, 900, 97)]


def test_the_floor_comes_from_where_the_run_started_and_only_discounts_a_rise():
    # warm-up: one start value 10, then 1s; the upper decile is the start: c = 0.01 x 10 = 0.1
    def detector(scale_floor=0.01):
        det = AdaptiveDetector(warmup_steps=10, alert_window=5, scale_floor=scale_floor)
        for i, v in enumerate([10.0] + [1.0] * 9):
            det.update(i, v)
        return det

    det = detector()
    assert det.baseline_natural()[0] == pytest.approx(1.0)  # the baseline stays in natural units
    spike = det.update(10, 2.15)  # rise log(2.25 / 1.1) over the floor, spread 0.02 (sigma floor)
    assert (spike.kind, spike.value) == ("spike", 2.15)
    assert spike.deviation == pytest.approx(math.log(2.25 / 1.1) / 0.02)
    # 2.05x is a spike without the floor (>= 2x), but (2.05 + 0.1) / 1.1 < 2 with it
    assert detector().update(10, 2.05) is None
    assert detector(0.0).update(10, 2.05).kind == "spike"


def test_bad_scale_floor_is_a_clear_error():
    with pytest.raises(ValueError, match="scale_floor=1.5"):
        AdaptiveDetector(scale_floor=1.5)


# -- vanishing gradients: relative to the other layers and the global norm --------------------------
def _judge(detectors, step, norms):
    norms = [float(n) for n in norms]
    detectors.judge({"step": step, "grad_norm": math.sqrt(sum(n * n for n in norms)), "layer_grad_norms": norms})


def _vanishing(detectors):
    return [(a.step, a.layer, a.message.split("| ")[-2]) for a in detectors.pending if a.kind == "vanishing"]


def test_layers_that_shrink_together_on_convergence_are_not_vanishing():
    # 13 layers (the small transformer) whose norms all fall x1e-8 over 600 steps, in step:
    # below the 1e-7 floor and x1e-3 below their own rolling baseline, yet none is off the others
    names = [f"layer{i}" for i in range(13)]
    det = HostDetectors(names, [], warmup_steps=100, alert_window=50, vanishing_floor=1e-7)
    scales = [0.5 + 0.1 * i for i in range(13)]
    for step in range(1, 801):
        decay = 10 ** (-8 * min(step, 600) / 600)
        _judge(det, step, [s * decay * (1 + 0.2 * math.sin(step * (i + 1))) for i, s in enumerate(scales)])
    assert _vanishing(det) == []


def test_one_layer_that_decays_while_the_others_do_not_is_vanishing():
    names = [f"layer{i}" for i in range(4)]
    det = HostDetectors(names, [], warmup_steps=100, alert_window=50, vanishing_floor=1e-7)
    for step in range(1, 401):
        first = 1.0 if step < 300 else 1e-5  # x1e-5 at step 300; the global norm barely moves
        _judge(det, step, [first, 1.0, 1.0, 1.0])
    assert _vanishing(det) == [(300, "layer0", "vanishing gradients in 1 of 4 layers: 'layer0' ")]


def test_converged_deep_linear_regression_has_no_vanishing_alert():
    # a real run: exactly learnable, loss 17 -> 1e-11 in 400 steps; every layer's gradient shrinks
    # together (to 1e-7 and below), which the old rule called "vanishing gradients in 2 of 3 layers"
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1000)
    x = torch.randn(256, 8, generator=g)
    y = 1.3 * x @ torch.randn(8, 1, generator=g)
    model = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with watch_training(model=model, optimizer=opt) as monitor:
        for _ in range(400):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            monitor.step(loss)
    history = monitor.history
    assert history[0]["loss"] > 10 and history[-1]["loss"] < 1e-9
    assert max(history[-1]["layer_grad_norms"]) < 1e-5
    assert [a for a in monitor.alerts if a.kind == "vanishing"] == []
