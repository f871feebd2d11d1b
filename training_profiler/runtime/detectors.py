"""The monitor's host side: judge each step's statistics (a plain dict, one per step) and produce
:class:`~.alerts.Alert` records.

Loss and global gradient norm go through the robust adaptive detectors of :mod:`.baseline`; the
per-layer gradient norms, the GradScaler's scale and the fp16/bf16 fractions through the small
rules below. Nothing here touches torch or logs an alert: new alerts collect in ``pending`` and
the monitor emits them (log line, ``on_alert``), so a detector's error never loses an alert
already found.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import numpy as np

from .alerts import Alert, baseline_text, fmt, make_alert
from .baseline import AdaptiveDetector

__all__ = ["HostDetectors"]

logger = logging.getLogger("training_profiler")

_VANISHING_SHARE = 1e-3  # a layer is negligible next to the others below this fraction of the global norm


class HostDetectors:
    """Every detector of one monitored run. ``layers`` / ``act_layers``: the names that the
    per-layer lists of a step record refer to."""

    def __init__(self, layers: list[str], act_layers: list[str], *, warmup_steps: int, alert_window: int,
                 vanishing_floor: float) -> None:
        self.layers, self.act_layers = layers, act_layers
        self.warmup_steps, self.alert_window, self.vanishing_floor = warmup_steps, alert_window, vanishing_floor
        self.series = {m: AdaptiveDetector(warmup_steps=warmup_steps, alert_window=alert_window)
                       for m in ("loss", "grad_norm")}
        self.pending: list[Alert] = []  # found, not yet emitted by the monitor
        self.last_alert: Alert | None = None
        self._nan_last: dict[str, int] = {}  # metric -> last NaN/Inf step (one alert per episode)
        self._episodes: dict[str, int] = {}  # alert key -> step of the last alert (one per episode)
        self._skips: deque[int] = deque()
        self._last_scale = math.nan
        self._layer_hist: deque[np.ndarray] = deque(maxlen=256)
        self._under_hist: deque[np.ndarray] = deque(maxlen=64)
        self._layer_base: np.ndarray | None = None
        self._layer_base_norm = 1e-30  # the global norm of _layer_base (at least 1e-30)
        self._last_grad_alert = -(10**9)

    # -- entry points ----------------------------------------------------------------------------
    def check_finite(self, step: int, metric: str, value: float, scaler: Any = None) -> None:
        """NaN/Inf in the loss or the global gradient norm: needs no baseline, one alert per episode."""
        if math.isfinite(value):
            return
        last = self._nan_last.get(metric)
        self._nan_last[metric] = step
        if last is not None and step - last < self.alert_window:
            return
        if metric == "grad_norm" and scaler is not None and scaler.is_enabled():
            return  # with a GradScaler an Inf gradient is a skipped step, judged by skipped_steps
        detector = self.series.get(metric)
        ready = detector is not None and detector.ready
        center, spread = detector.baseline_natural() if ready else (math.nan, math.nan)
        self._alert(step, metric, "nonfinite", value, center, spread, math.inf, None,
                    f"{metric}: {value} ({baseline_text(center, spread)}) | non-finite")

    @staticmethod
    def any_small(layers: list[list[float]], global_norms: list[float]) -> list[bool]:
        """For :meth:`judge`, per record of a batch: is any layer negligible next to the global
        norm (a layer without gradients, NaN, is not)."""
        return [any(v < limit for v in row)
                for row, limit in zip(layers, [_VANISHING_SHARE * g for g in global_norms])]

    def judge(self, rec: dict[str, Any], layers: list[float] | None = None, any_small: bool | None = None) -> None:
        """Judge one step record (see ``TrainingMonitor.history``); ``layers``: its per-layer
        gradient norms (kept), ``any_small``: their :meth:`any_small` (both optional; given,
        they come from the same batch of norms as the record's global norm)."""
        step = rec["step"]
        if "loss" in self.series and rec.get("loss", 1.0) <= 0.0:
            # the detectors work in log space; a loss that can be <= 0 keeps only its NaN/Inf check
            del self.series["loss"]
            logger.info("[Monitor] Step %d | loss %s <= 0: loss spikes are not judged for this run, "
                        "NaN/Inf still are", step, fmt(rec["loss"]))
        for metric in ("loss", "grad_norm"):
            if metric not in rec or metric not in self.series:
                continue
            verdict = self.series[metric].update(step, rec[metric])
            if verdict is None or verdict.kind == "nonfinite":  # NaN/Inf: reported by check_finite
                continue
            if not verdict.is_alert:
                logger.info("[Monitor] Step %d | %s baseline moved to %s (a learning-rate schedule step?); "
                            "not an alert", step, metric, fmt(verdict.baseline))
                continue
            layer = None
            text = (f"{metric}: {fmt(verdict.value)} ({baseline_text(verdict.baseline, verdict.spread)})"
                    f" | Deviation: {verdict.deviation:.0f}σ | {verdict.kind}")
            if metric == "grad_norm" and "layer_grad_norms" in rec and self._layer_hist:
                layer, ratio = self._first_layer_off(step, np.asarray(rec["layer_grad_norms"]))
                if layer is not None:
                    text += f" | first layer off its baseline: '{layer}' ({ratio:.1f}x)"
            self._alert(step, metric, verdict.kind, verdict.value, verdict.baseline, verdict.spread,
                        verdict.deviation, layer, text, advice_key=metric)
            if metric == "grad_norm":
                self._last_grad_alert = step
        if "layer_grad_norms" in rec:
            norms = np.asarray(rec["layer_grad_norms"]) if layers is None else layers
            # from one batch of norms, a layer norm is Inf only when the global norm is not finite
            if math.isfinite(rec["grad_norm"]) and (any_small is not None or not np.isinf(norms).any()):
                self._check_vanishing(step, norms, rec["grad_norm"], any_small)
                self._layer_hist.append(norms)
        if "loss_scale" in rec:
            self._check_scaler(step, rec["loss_scale"])
        if "activation_overflow" in rec:
            self._check_precision(step, np.asarray(rec["activation_overflow"]),
                                  np.asarray(rec["activation_underflow"]))
        if "grad_overflow" in rec:
            self._check_grad_precision(step, rec["grad_overflow"], rec["grad_underflow"])

    def status(self, rec: dict[str, Any]) -> str | None:
        """The periodic ``[Monitor] Step N | ...`` line for ``rec``, or None when there is nothing to say."""
        metric = "grad_norm" if "grad_norm" in rec else "loss"
        if metric not in rec or metric not in self.series:
            return None
        center, spread = self.series[metric].baseline_natural()
        if not math.isfinite(rec[metric]):  # never "OK" next to a NaN/Inf, however old the last alert
            status = "NON-FINITE"
        elif not self.series[metric].ready:
            status = f"warm-up ({self.warmup_steps} steps)"
        elif self.last_alert is not None and rec["step"] - self.last_alert.step < self.alert_window:
            status = f"ALERT ({self.last_alert.kind})"
        else:
            status = "OK"
        return (f"[Monitor] Step {rec['step']} | {metric}: {fmt(rec[metric])} ({baseline_text(center, spread)}) "
                f"| Status: {status}")

    # -- per-layer and precision rules -------------------------------------------------------------
    def _layer_baseline(self, step: int) -> np.ndarray:
        """Per-layer median gradient norm over the recent history (recomputed every alert_window steps)."""
        if self._layer_base is None or step % self.alert_window == 0:
            self._layer_base = np.median(np.array(self._layer_hist), axis=0)  # np.array: 3x faster than np.stack here
            self._layer_base_norm = max(float(np.sqrt(np.nansum(self._layer_base * self._layer_base))), 1e-30)
        return self._layer_base

    def _first_layer_off(self, step: int, norms: np.ndarray) -> tuple[str | None, float]:
        """The layer that left its own baseline (>= 2x) first, among those still off it now."""
        base = np.maximum(self._layer_baseline(step), 1e-30)
        rows = [norms, *reversed(list(self._layer_hist)[-self.alert_window :])]  # newest first
        off = np.nan_to_num(np.stack(rows) / base) >= 2.0
        streak = np.zeros(len(norms), dtype=int)
        alive = off[0].copy()
        for row in off:  # how many consecutive recent steps each layer has been off its baseline
            alive &= row
            streak += alive
        if not streak.any():
            return None, 1.0
        ratio = np.nan_to_num(norms / base)
        first = int(np.lexsort((-ratio, -streak))[0])  # longest streak, then the largest ratio
        return self.layers[first], float(ratio[first])

    def _check_vanishing(self, step: int, norms: np.ndarray, global_norm: float, any_small: bool | None = None) -> None:
        """A layer vanishes when its gradient is negligible next to the others' (< 1e-3 of the global
        norm) and, besides, tiny (below ``vanishing_floor``) or fallen 1000x further than the global
        norm since its baseline. A run that converges shrinks every gradient together: no alert."""
        if step - self._last_grad_alert < self.alert_window:
            return  # saturated layers during an explosion are a symptom, not a second problem
        baseline = len(self._layer_hist) >= self.warmup_steps
        if baseline:
            base = self._layer_baseline(step)  # every step: it is recomputed on its own cadence
        if any_small is False:  # the common case, checked for the whole batch: no layer is negligible
            self._episode_quiet("vanishing", step)
            return
        norms = np.asarray(norms)
        small = norms < _VANISHING_SHARE * global_norm  # NaN (layer without gradients) compares False
        if not small.any():
            self._episode_quiet("vanishing", step)
            return
        vanishing = small & (norms < self.vanishing_floor)
        if baseline:
            global_decay = global_norm / self._layer_base_norm
            vanishing |= small & (norms < _VANISHING_SHARE * global_decay * base)
        bad = np.nonzero(vanishing)[0]
        if len(bad) == 0:
            self._episode_quiet("vanishing", step)
            return
        first = int(bad[0])
        names = [self.layers[i] for i in bad]
        listed = ", ".join(f"'{n}'" for n in names[:3]) + (f" ... '{names[-1]}'" if len(names) > 3 else "")
        self._alert(step, "layer_grad_norm", "vanishing", float(norms[first]), self.vanishing_floor, 0.0,
                    -math.inf, names[0],
                    f"Layer '{names[0]}' grad_norm: {fmt(float(norms[first]))} (floor: {self.vanishing_floor:g}, "
                    f"largest layer: {fmt(float(np.nanmax(norms)))}) | vanishing gradients in {len(bad)} of "
                    f"{len(norms)} layers: {listed}", episode="vanishing")

    def _check_scaler(self, step: int, scale: float) -> None:
        if scale < self._last_scale:  # a backoff: the GradScaler skipped this step
            self._skips.append(step)
        self._last_scale = scale
        while self._skips and self._skips[0] <= step - 100:
            self._skips.popleft()
        # one backoff every growth_interval (2000) steps is the scaler working as designed
        if step > self.warmup_steps and len(self._skips) >= 3:
            self._alert(step, "loss_scale", "skipped_steps", scale, math.nan, 0.0, math.nan, None,
                        f"loss_scale: {fmt(scale)} | {len(self._skips)} skipped optimizer steps in the last 100",
                        episode="skipped_steps")
        else:
            self._episode_quiet("skipped_steps", step)

    def _check_precision(self, step: int, over: np.ndarray, under: np.ndarray) -> None:
        bad = np.nonzero(np.nan_to_num(over) > 0)[0]
        if len(bad):
            i = int(bad[0])
            self._alert(step, "activation_overflow", "overflow", float(over[i]), 0.0, 0.0, math.inf,
                        self.act_layers[i],
                        f"Layer '{self.act_layers[i]}' overflow_ratio: {fmt(float(over[i]))} (values at or beyond "
                        f"half the fp16/bf16 maximum or Inf; baseline: 0) | {len(bad)} layer(s)",
                        advice_key="overflow", episode="overflow")
        else:
            self._episode_quiet("overflow", step, quiet=1)
        under = np.nan_to_num(under)
        if len(self._under_hist) >= 5:
            hist = np.stack(self._under_hist)
            base = np.median(hist, axis=0)
            spread = np.median(np.abs(hist - base), axis=0) * 1.4826
            worse = np.nonzero((under > 0.01) & (under > 10 * base + 1e-3))[0]
            if len(worse):
                i = int(worse[0])
                self._alert(step, "activation_underflow", "underflow", float(under[i]), float(base[i]),
                            float(spread[i]), math.nan, self.act_layers[i],
                            f"Layer '{self.act_layers[i]}' underflow_ratio: {fmt(float(under[i]))} (baseline: "
                            f"{fmt(float(base[i]))}±{fmt(float(spread[i]))})", advice_key="underflow",
                            episode="underflow")
            else:
                self._episode_quiet("underflow", step, quiet=1)
        self._under_hist.append(under)

    def _check_grad_precision(self, step: int, over: float, under: float) -> None:
        """fp16/bf16 gradients (pure low-precision training): Inf / near-max values, or more than 1%
        of the non-zero values below the smallest normal (lost to underflow next)."""
        if over > 0:
            self._alert(step, "gradient_overflow", "overflow", over, 0.0, 0.0, math.inf, None,
                        f"gradient overflow_ratio: {fmt(over)} (values at or beyond half the fp16/bf16 maximum "
                        f"or Inf; baseline: 0)", advice_key="gradient_overflow", episode="grad_overflow")
        else:
            self._episode_quiet("grad_overflow", step, quiet=1)
        if under > 0.01:
            self._alert(step, "gradient_underflow", "underflow", under, 0.0, 0.0, math.nan, None,
                        f"gradient underflow_ratio: {fmt(under)} (limit: 0.01) | the gradients are fp16/bf16 "
                        f"subnormals", advice_key="underflow", episode="grad_underflow")
        else:
            self._episode_quiet("grad_underflow", step, quiet=1)

    # -- episodes ------------------------------------------------------------------------------------
    def _episode_quiet(self, key: str, step: int, quiet: int | None = None) -> None:
        """Re-arm an episode-based alert after ``alert_window`` quiet steps."""
        last = self._episodes.get(key)
        if last is not None and step - last >= (quiet if quiet is not None else self.alert_window):
            del self._episodes[key]

    def _alert(self, step: int, metric: str, kind: str, value: float, baseline: float, spread: float,
               deviation: float, layer: str | None, text: str, advice_key: str | None = None,
               episode: str | None = None) -> None:
        if episode is not None:
            if episode in self._episodes:
                self._episodes[episode] = step  # still in the same episode: stay quiet
                return
            self._episodes[episode] = step
        alert = make_alert(step, metric, kind, value, baseline, spread, deviation, layer, text, advice_key)
        self.last_alert = alert
        self.pending.append(alert)
