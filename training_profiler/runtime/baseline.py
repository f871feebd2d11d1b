"""Robust adaptive detectors for one scalar training series (loss, gradient norm).

Pure Python (no torch, no numpy) so the decision logic can be unit-tested and benchmarked on
millions of synthetic steps. The monitor feeds it host-side values in batches.

The detector works in log space (a gradient norm that doubles is the same event at 1e-3 and at
1e3). Its baseline is the median of the last ``window`` accepted values and its spread the
interquartile range / 1.349 (a robust sigma); values far above the baseline are flagged and kept
out of the history, so one spike does not poison it. After ``warmup_steps`` values it is armed and
raises at most one alert per episode; it re-arms after ``alert_window`` quiet steps.

Alert kinds (upward series):
- ``nonfinite``: NaN/Inf, needs no baseline, reported even during warm-up.
- ``spike``: one value at least ``z_spike`` sigma and ``min_ratio`` times above the baseline.
- ``rising``: ``run_len`` consecutive values above ``z_run`` sigma, growing, ``min_ratio`` above.
- ``divergence``: sustained growth: the median level of the last 50 steps is ``divergence_ratio``
  times the level ``divergence_span`` steps earlier (slow explosions that a rolling baseline
  would otherwise follow).
- ``vanishing`` (only with ``low_ratio``): a value below ``low_ratio`` times the baseline.
A level shift that persists (an LR schedule step) is not an alert: after ``alert_window`` flagged
steps at a flat level the baseline moves there and a ``shift`` info verdict is returned.

Scale-aware floor: a run that converges (loss 13 -> 1e-10) ends in relative wobbles (1e-10 ->
1e-6) that are huge in log space and meaningless at the run's own scale. At the end of warm-up
the detector fixes an offset ``c = scale_floor x`` the run's early scale (the upper decile of the
warm-up values: where the run started, not where a fast warm-up already got to) and measures a
rise (spike, rising run, divergence) as ``log(value + c) - log(baseline + c)`` against the series'
own spread: rises well above ``c`` count as before, changes far below it vanish, and a value must
climb to about ``c`` before it can count as a rise. The floor only ever discounts a rise.
The default 0.01 is the smallest that keeps real converging runs under 0.5 false alarms per 10k
steps while every planted fault is still caught within 25 steps (``bench/fit_monitor_floor.py``,
on recorded runs; the held-out runs are in ``bench/monitor_detection.py``).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

__all__ = ["Verdict", "AdaptiveDetector", "MeanStdRule"]

_TINY = 1e-38  # log of 0 would be -inf; a zero norm is "far below" anything
_BLOCK = 10  # steps per block of the divergence test
_LEVEL_BLOCKS = 5  # blocks whose median gives one "level" (50 steps)


@dataclass(frozen=True)
class Verdict:
    """One decision of a detector: an alert, or an info message (``is_alert=False``)."""

    kind: str  # nonfinite | spike | rising | divergence | vanishing | shift
    step: int
    value: float
    baseline: float  # median of the history, in the series' own units (nan before warm-up)
    spread: float  # robust sigma expressed in the series' own units
    deviation: float  # distance from the baseline in robust sigmas (log space)
    is_alert: bool = True


def _median_sorted(values: list[float]) -> float:
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else 0.5 * (values[mid - 1] + values[mid])


def _median(values) -> float:
    return _median_sorted(sorted(values))


class AdaptiveDetector:
    """Decide, value by value, whether a positive series (loss, gradient norm) misbehaves.

    ``update(step, value)`` returns a :class:`Verdict` or ``None``; it never raises on odd
    values (NaN, Inf, zero, negative: negative values are treated as 0 in log space).
    """

    def __init__(
        self,
        *,
        warmup_steps: int = 100,
        alert_window: int = 50,
        window: int = 256,
        z_accept: float = 4.0,
        z_spike: float = 6.0,
        min_ratio: float = 2.0,
        run_len: int = 5,
        z_run: float = 3.0,
        divergence_ratio: float = 2.0,
        divergence_span: int = 500,
        low_ratio: float | None = None,
        sigma_floor: float = 0.02,
        scale_floor: float = 0.01,
    ) -> None:
        if warmup_steps < 10:
            raise ValueError(f"warmup_steps={warmup_steps} is too short to learn a baseline: use at least 10")
        if alert_window < 1:
            raise ValueError(f"alert_window={alert_window} must be a positive number of steps")
        if divergence_span < 4 * _BLOCK * _LEVEL_BLOCKS:
            raise ValueError(f"divergence_span={divergence_span} must be at least {4 * _BLOCK * _LEVEL_BLOCKS} steps")
        self.warmup_steps = warmup_steps
        self.alert_window = alert_window
        self.window = max(window, warmup_steps)
        self.z_accept = z_accept
        self.z_spike = z_spike
        self.log_min_ratio = math.log(min_ratio)
        self.run_len = run_len
        self.z_run = z_run
        self.log_div_ratio = math.log(divergence_ratio)
        self.log_low_ratio = math.log(low_ratio) if low_ratio else None
        self.sigma_floor = sigma_floor
        if not 0.0 <= scale_floor < 1.0:
            raise ValueError(f"scale_floor={scale_floor} must be in [0, 1): a fraction of the run's early scale")
        self.scale_floor = scale_floor
        self._offset = 0.0  # c of the scale-aware floor, fixed at the end of warm-up
        self._span_blocks = divergence_span // _BLOCK

        self._fifo: deque[float] = deque()  # accepted log values, oldest first
        self._sorted: list[float] = []  # the same values, sorted (median / IQR in O(1))
        self._seen = 0  # finite values seen
        self._armed = False
        self._quiet = 0
        self._nan_episode = False
        self._run = 0
        self._recent: deque[float] = deque(maxlen=max(alert_window, run_len))
        self._recent_high: deque[bool] = deque(maxlen=alert_window)
        self._block: list[float] = []
        self._blocks: deque[float] = deque(maxlen=self._span_blocks + _LEVEL_BLOCKS)

    # -- baseline ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once warm-up is over and the baseline is in use."""
        return self._seen >= self.warmup_steps

    def baseline(self) -> tuple[float, float]:
        """(median, robust sigma) of the accepted history, in log space."""
        s = self._sorted
        if not s:
            return math.nan, math.nan
        n = len(s)
        iqr = s[(3 * n) // 4] - s[n // 4]
        return _median_sorted(s), max(iqr / 1.349, self.sigma_floor)

    def baseline_natural(self) -> tuple[float, float]:
        """(median, spread) in the series' own units, for messages like ``2.1±0.5``."""
        med, sig = self.baseline()
        if math.isnan(med):
            return math.nan, math.nan
        center = math.exp(med)
        return center, center * (math.exp(sig) - 1.0)

    def _floored(self, y: float) -> float:
        """log(value + c) of a log value: the scale-aware floor (identity before it is fixed)."""
        return y if self._offset == 0.0 else math.log(math.exp(y) + self._offset)

    def _fix_floor(self) -> None:
        """End of warm-up: fix c from the early scale; the divergence levels move onto log(value + c)."""
        early = self._sorted[(9 * len(self._sorted)) // 10]  # upper decile of the warm-up (log)
        self._offset = self.scale_floor * math.exp(early)
        self._block = [self._floored(y) for y in self._block]
        self._blocks = deque((self._floored(y) for y in self._blocks), maxlen=self._blocks.maxlen)

    def _accept(self, y: float) -> None:
        self._fifo.append(y)
        bisect.insort(self._sorted, y)
        if len(self._fifo) > self.window:
            old = self._fifo.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def _rebaseline(self, values) -> None:
        self._fifo = deque(values)
        self._sorted = sorted(values)
        self._recent_high.clear()
        self._run = 0

    # -- divergence test ----------------------------------------------------------------------
    def _divergence(self, y: float) -> bool:
        self._block.append(y)
        if len(self._block) < _BLOCK:
            return False
        self._blocks.append(_median(self._block))
        self._block.clear()
        if len(self._blocks) < self._blocks.maxlen:
            return False
        blocks = list(self._blocks)
        k = _LEVEL_BLOCKS
        quarter = 0.25 * self.log_div_ratio
        now = _median(blocks[-k:])
        # two time scales: the full span catches 0.2%/step growth, 2/5 of it reacts faster to 1%/step
        for span in (self._span_blocks, (2 * self._span_blocks) // 5):
            ref = _median(blocks[-span - k : -span])
            mid = _median(blocks[-span // 2 - k // 2 - 1 : -span // 2 + k // 2])
            # sustained growth: above the ratio overall, and rising in both halves of the span
            if now - ref >= self.log_div_ratio and mid - ref >= quarter and now - mid >= quarter:
                return True
        return False

    # -- the decision --------------------------------------------------------------------------
    def update(self, step: int, value: float) -> Verdict | None:
        if not math.isfinite(value):
            med, spread = self.baseline_natural() if self.ready else (math.nan, math.nan)
            if self._nan_episode:
                return None
            self._nan_episode = True
            return Verdict("nonfinite", step, value, med, spread, math.inf)
        self._nan_episode = False
        y = math.log(max(value, _TINY))
        self._seen += 1
        if self._seen <= self.warmup_steps:
            self._accept(y)
            self._recent.append(y)
            self._divergence(y)
            if self._seen == self.warmup_steps:
                self._armed = True
                self._fix_floor()
            return None

        med, sig = self.baseline()
        # the rise is measured above the floor, the spread is the series' own: the floor can only
        # discount a rise (never make noise near it look larger)
        fy = self._floored(y)
        rise = fy - self._floored(med)
        z = rise / sig
        high = z >= self.z_accept
        self._run = self._run + 1 if z >= self.z_run else 0
        self._recent.append(y)
        self._recent_high.append(high)

        kind = None
        if z >= self.z_spike and rise >= self.log_min_ratio:
            kind = "spike"
        elif (
            self._run >= self.run_len
            and rise >= self.log_min_ratio
            and fy > self._floored(self._recent[-self.run_len]) + sig
        ):
            kind = "rising"
        if self._divergence(fy) and kind is None:
            kind = "divergence"
        if kind is None and self.log_low_ratio is not None and y - med <= self.log_low_ratio:
            kind = "vanishing"

        verdict = None
        if kind is not None:
            self._quiet = 0
            if self._armed:
                self._armed = False
                center, spread = self.baseline_natural()
                verdict = Verdict(kind, step, value, center, spread, z)
        elif not high:
            self._quiet += 1
            if not self._armed and self._quiet >= self.alert_window:
                self._armed = True
        if not high:
            self._accept(y)

        # a flat level that stays high for alert_window steps is the new normal (LR schedule)
        if len(self._recent_high) == self.alert_window and sum(self._recent_high) >= 0.9 * self.alert_window:
            recent = list(self._recent)[-self.alert_window :]
            half = len(recent) // 2
            if _median(recent[half:]) - _median(recent[:half]) < 0.5 * self.log_min_ratio:
                self._rebaseline(recent)
                self._armed = True
                self._quiet = 0
                if verdict is None:
                    center, spread = self.baseline_natural()
                    moved = (self.baseline()[0] - med) / sig
                    verdict = Verdict("shift", step, value, center, spread, moved, is_alert=False)
        return verdict


class MeanStdRule:
    """The naive rule, for comparison: mean and std of the warm-up values, then alarm on every
    value more than ``k`` standard deviations away (no robustness, no adaptation)."""

    def __init__(self, warmup_steps: int = 100, k: float = 3.0) -> None:
        self.warmup_steps = warmup_steps
        self.k = k
        self._values: list[float] = []
        self._mean = math.nan
        self._std = math.nan

    def update(self, step: int, value: float) -> bool:
        if not math.isfinite(value):
            return True
        if len(self._values) < self.warmup_steps:
            self._values.append(value)
            if len(self._values) == self.warmup_steps:
                n = len(self._values)
                self._mean = sum(self._values) / n
                self._std = math.sqrt(sum((v - self._mean) ** 2 for v in self._values) / (n - 1))
            return False
        return abs(value - self._mean) > self.k * self._std
