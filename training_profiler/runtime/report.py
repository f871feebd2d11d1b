"""`training-profiler report HISTORY.jsonl -o run.html`: an HTML report of a monitor run.

Reads the JSONL that :meth:`TrainingMonitor.export_history` writes (one object per step) into a
:class:`MonitorHistory` record, which :func:`training_profiler.formats.html.monitor_to_html`
draws. Besides step rows the reader accepts two optional kinds of line, used when present:
``{"meta": {"layers": [...], "warmup_steps": N, "alert_window": N}}``
and ``{"alert": {<Alert.to_dict()>}}``. Without alert lines, the loss and gradient-norm alerts are
recomputed by replaying the monitor's own detector over the history. The baseline band is always
that replay: the monitor keeps no per-step baseline.

Torch-free: the detector (:mod:`.baseline`) is pure Python.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .baseline import AdaptiveDetector

__all__ = ["MonitorHistory", "read_history", "register", "write_monitor_report"]

# TrainingMonitor's defaults, for a history file that does not say which settings its run used
_WARMUP_STEPS, _ALERT_WINDOW = 100, 50


@dataclass
class MonitorHistory:
    """One monitor run, as the HTML report draws it."""

    rows: list[dict[str, Any]]  # one per step: step, loss, grad_norm, layer_grad_norms, ...
    layers: list[str]  # names of the entries of each row's layer_grad_norms
    alerts: list[dict[str, Any]]  # Alert.to_dict() rows, by step
    bands: dict[str, dict[str, Any]]  # metric -> {steps, center, low, high, sigmas}: the learned baseline
    source: str = ""
    notes: list[str] = field(default_factory=list)


def _baseline_bands(rows: list[dict[str, Any]], warmup_steps: int, alert_window: int
                    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Replay the monitor's loss and gradient-norm detectors: the baseline after each step
    (median ± ``z_accept`` robust sigmas, log space) and the alerts they raise."""
    bands, alerts = {}, []
    for metric in ("loss", "grad_norm"):
        detector = AdaptiveDetector(warmup_steps=warmup_steps, alert_window=alert_window)
        band: dict[str, Any] = {"steps": [], "center": [], "low": [], "high": [], "sigmas": detector.z_accept}
        for row in rows:
            value = row.get(metric)
            if value is None:
                continue
            if metric == "loss" and value <= 0:  # the monitor stops judging such a loss (log space)
                break
            verdict = detector.update(row["step"], value)
            if verdict is not None and verdict.is_alert:
                alerts.append({"step": verdict.step, "metric": metric, "kind": verdict.kind, "value": verdict.value,
                               "baseline": verdict.baseline, "spread": verdict.spread, "deviation": verdict.deviation,
                               "layer": None, "advice": "",
                               "message": f"{metric}: {verdict.value:.3g} (baseline {verdict.baseline:.3g}) | {verdict.kind}"})
            if detector.ready:
                med, sig = detector.baseline()
                half = detector.z_accept * sig
                band["steps"].append(row["step"])
                band["center"].append(math.exp(med))
                band["low"].append(math.exp(med - half))
                band["high"].append(math.exp(med + half))
        bands[metric] = band
    return bands, sorted(alerts, key=lambda a: a["step"])


def _history(rows: list[dict[str, Any]], source: str, layers: list[str] | None, alerts: list[dict[str, Any]] | None,
             warmup_steps: int | None, alert_window: int | None) -> MonitorHistory:
    notes = []
    bands, replayed = _baseline_bands(rows, warmup_steps or _WARMUP_STEPS, alert_window or _ALERT_WINDOW)
    if warmup_steps is None:
        notes.append(f"the history does not say which warm-up its run used: the baseline band assumes the default "
                     f"({_WARMUP_STEPS} steps, alert window {_ALERT_WINDOW})")
    if alerts is None:
        alerts = replayed
        notes.append("the history holds no alerts: loss and gradient-norm alerts were recomputed with the monitor's "
                     "detector (per-layer and precision alerts need the run itself: use monitor.report())")
    width = max((len(r.get("layer_grad_norms") or ()) for r in rows), default=0)
    if layers is None or len(layers) != width:
        if width:
            notes.append("the history does not name its layers: they are numbered in parameter order")
        layers = [f"layer {i}" for i in range(width)]
    return MonitorHistory(rows=rows, layers=list(layers), alerts=sorted(alerts, key=lambda a: a["step"]), bands=bands,
                          source=source, notes=notes)


def read_history(path: str | Path) -> MonitorHistory:
    """A monitor history written by ``export_history(path)`` (``.jsonl``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no history file {str(path)!r}: write one with monitor.export_history('history.jsonl')") from None
    rows, alerts, meta = [], [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number} is not JSON ({exc.msg}): pass the .jsonl that "
                             "monitor.export_history() writes") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number} is not a JSON object: pass the .jsonl that monitor.export_history() writes")
        if "alert" in item:
            alerts.append(item["alert"])
        elif "meta" in item:
            meta.update(item["meta"])
        elif isinstance(item.get("step"), int):
            rows.append(item)
        else:
            raise ValueError(f"{path}:{number} has no integer 'step': pass the .jsonl that monitor.export_history() writes")
    if not rows:
        raise ValueError(f"{path} holds no steps: run some training steps before export_history()")
    return _history(rows, path.name, meta.get("layers"), alerts or None, meta.get("warmup_steps"),
                    meta.get("alert_window"))


def write_monitor_report(monitor: Any, path: str | Path) -> Path:
    """``monitor.report(path)``: the HTML report of a live :class:`TrainingMonitor`."""
    from ..formats.html import monitor_to_html

    rows = monitor.history
    if not rows:
        raise ValueError("monitor.report: no steps recorded yet: run some training steps first")
    run = _history(rows, type(monitor.model).__name__ if monitor.model is not None else "run", monitor.layers,
                   [a.to_dict() for a in monitor.alerts], monitor.warmup_steps, monitor.alert_window)
    path = Path(path)
    path.write_text(monitor_to_html(run), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="a self-contained HTML report of a monitor history (monitor.export_history)")
    p.add_argument("history", metavar="HISTORY.jsonl", help="the file monitor.export_history('run.jsonl') wrote")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write the HTML here (default: stdout)")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from ..formats.html import monitor_to_html
    from ..inputs import UsageError

    try:
        page = monitor_to_html(read_history(args.history))
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    if args.output:
        Path(args.output).write_text(page, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(page)
    return 0
