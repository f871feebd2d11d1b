"""The adaptive detector behind @watch_training, on hand-made series (pure Python, fast)."""

import math
import random

import pytest

from training_profiler.runtime.baseline import AdaptiveDetector, MeanStdRule


def _noise(n, sigma=0.2, level=1.0, seed=0):
    rng = random.Random(seed)
    return [level * math.exp(rng.gauss(0.0, sigma)) for _ in range(n)]


def _feed(det, values):
    return [v for i, x in enumerate(values) if (v := det.update(i, x)) is not None]


def test_clean_lognormal_series_raises_nothing():
    assert _feed(AdaptiveDetector(), _noise(5000)) == []


def test_isolated_spike_alerts_at_its_step_with_deviation():
    values = _noise(1000)
    values[500] = 10 * values[500]
    verdicts = _feed(AdaptiveDetector(), values)
    assert [(v.kind, v.step, v.is_alert) for v in verdicts] == [("spike", 500, True)]
    assert verdicts[0].deviation > 8
    assert 0.8 < verdicts[0].baseline < 1.2  # the median of exp(N(0, 0.2)) is 1


def test_one_alert_per_episode_and_rearm_after_alert_window_quiet_steps():
    values = _noise(1000)
    for s in (300, 310, 500):  # 310 is inside the first episode; 500 is after 50 quiet steps
        values[s] *= 20
    assert [v.step for v in _feed(AdaptiveDetector(alert_window=50), values)] == [300, 500]


def test_nan_in_warmup_alerts_at_once_without_baseline():
    values = _noise(50)
    values[7] = math.nan
    verdicts = _feed(AdaptiveDetector(warmup_steps=100), values)
    assert [(v.kind, v.step) for v in verdicts] == [("nonfinite", 7)]
    assert math.isnan(verdicts[0].baseline)


def test_exponential_explosion_is_caught_within_a_few_steps():
    values = _noise(1000)
    for i in range(600, 1000):
        values[i] *= math.exp(0.2 * (i - 599))
    verdicts = _feed(AdaptiveDetector(), values)
    assert verdicts and verdicts[0].kind in ("spike", "rising")
    assert 600 <= verdicts[0].step <= 610


def test_slow_divergence_that_a_rolling_baseline_would_follow_is_caught():
    values = _noise(2000, sigma=0.1)
    for i in range(1000, 2000):
        values[i] *= math.exp(0.005 * (i - 999))  # x2 after 140 steps, x10 after 460
    verdicts = _feed(AdaptiveDetector(), values)
    alerts = [v for v in verdicts if v.is_alert]
    assert alerts and alerts[0].kind == "divergence"
    assert 1000 < alerts[0].step < 1000 + 460


def test_persistent_level_shift_moves_the_baseline_without_alert():
    values = _noise(1500, sigma=0.02)
    for i in range(700, 1500):
        values[i] *= 1.5  # 20 sigma but below min_ratio: an LR schedule step, not an explosion
    verdicts = _feed(AdaptiveDetector(), values)
    assert [v.kind for v in verdicts] == ["shift"]
    assert not verdicts[0].is_alert
    assert 700 + 44 <= verdicts[0].step <= 700 + 55
    assert verdicts[0].baseline == pytest.approx(1.5, rel=0.05)


def test_downward_drift_is_followed_silently():
    values = [v * math.exp(-3.0 * i / 3000) for i, v in enumerate(_noise(3000))]
    assert _feed(AdaptiveDetector(), values) == []


def test_vanishing_only_when_asked_for():
    values = _noise(400)
    for i in range(300, 400):
        values[i] *= 1e-5
    assert _feed(AdaptiveDetector(), values) == []
    verdicts = _feed(AdaptiveDetector(low_ratio=1e-3), values)
    assert [(v.kind, v.step) for v in verdicts] == [("vanishing", 300)]


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="warmup_steps=5"):
        AdaptiveDetector(warmup_steps=5)
    with pytest.raises(ValueError, match="alert_window=0"):
        AdaptiveDetector(alert_window=0)


def test_seed_mean_std_rule_alarms_on_a_drift_that_ours_follows():
    values = [v * math.exp(-1.5 * i / 2000) for i, v in enumerate(_noise(2000))]
    rule = MeanStdRule(warmup_steps=100)
    alarms = sum(rule.update(i, v) for i, v in enumerate(values))
    assert alarms > 300  # the drifted level is > 3 warm-up stds away for much of the run
    assert _feed(AdaptiveDetector(), values) == []
