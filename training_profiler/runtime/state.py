"""What a monitor keeps across a restart, and the record of its opt-in actions.

``TrainingMonitor.state_dict()`` is plain JSON data (dicts, lists, numbers, strings, None): the
detectors' learned baselines and episode state, the last :data:`HISTORY_TAIL` history records, the
step count and the alerts so far. It fits a Lightning checkpoint loaded with ``weights_only=True``,
a JSON file next to a Hugging Face checkpoint, or ``torch.save``. A run resumed from it continues
at its step count and judges the next step against the baseline it had learned: no second warm-up.

The functions here take the ``TrainingMonitor`` (typed ``Any``: the monitor imports this module).
The detectors are saved attribute by attribute (:func:`_encode`), so a detector that gains an
attribute needs no change here; an attribute the saved state lacks keeps its fresh value.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import deque
from typing import Any

import numpy as np

from .alerts import Alert

__all__ = ["HISTORY_TAIL", "STATE_VERSION", "load_monitor_state", "monitor_state", "spike_score"]

logger = logging.getLogger("training_profiler")

STATE_VERSION = 1
HISTORY_TAIL = 256  # history records kept in a state (the plots of a resumed run start from them)
SPIKE_WINDOW = 1000  # steps over which spike_score counts anomalies
_BATCH_ANOMALIES = ("spike", "nonfinite")  # alert kinds that point at one step's batch (skip_list)


# -- state_dict / load_state_dict ------------------------------------------------------------------
def monitor_state(monitor: Any) -> dict[str, Any]:
    """``monitor.state_dict()``: judges every pending step first, so the state is complete."""
    monitor.flush()
    detectors = monitor._detectors
    return {
        "version": STATE_VERSION,
        "step_count": monitor.step_count,
        "layers": monitor.layers,
        "history": [dict(rec) for rec in list(monitor._history)[-HISTORY_TAIL:]],
        "alerts": [alert.to_dict() for alert in sorted(monitor._alerts, key=lambda a: a.step)],
        "detectors": None if detectors is None else _encode(detectors),
    }


def load_monitor_state(monitor: Any, state: dict[str, Any]) -> None:
    """``monitor.load_state_dict(state)``: a bad state is a ValueError; before the model is
    attached the state waits in ``monitor._restore`` and is applied on attach."""
    if not isinstance(state, dict) or not {"version", "step_count", "layers", "detectors"} <= set(state):
        raise ValueError("load_state_dict: not a monitor state: pass what TrainingMonitor.state_dict() returned")
    if state["version"] != STATE_VERSION:
        raise ValueError(f"load_state_dict: monitor state version {state['version']!r} is not supported "
                         f"(this version reads {STATE_VERSION}): start the monitor afresh")
    if monitor.model is None:
        monitor._restore = state
        return
    if state["detectors"] is not None and list(state["layers"]) != monitor.layers:
        raise ValueError(f"load_state_dict: the state was saved for a model with {len(state['layers'])} layers "
                         f"(first {state['layers'][:1]}), this monitor watches {len(monitor.layers)} "
                         f"(first {monitor.layers[:1]}): load it into the monitor of the same model")
    monitor.flush()
    if state["detectors"] is not None:
        monitor._detectors = _decode(state["detectors"], monitor._detectors)
    monitor.step_count = monitor._judged = int(state["step_count"])
    monitor._history.clear()
    monitor._history.extend(dict(rec) for rec in state["history"])
    monitor._alerts = [Alert(**alert) for alert in state["alerts"]]


def apply_pending_state(monitor: Any) -> None:
    """On attach: apply a state loaded before the model was known. A state that does not fit
    this model is logged and dropped (the monitor then warms up afresh); it never raises."""
    state, monitor._restore = monitor._restore, None
    try:
        load_monitor_state(monitor, state)
    except Exception as exc:  # noqa: BLE001 - the monitor never raises into training
        logger.warning("[Monitor] the saved monitor state was not restored (%s); the monitor learns its "
                       "baseline afresh", exc)


_SCALARS = (str, int, float, bool, type(None))


def _encode(value: Any) -> Any:
    """``value`` as JSON data; containers and objects are tagged so that :func:`_decode` rebuilds them."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, Alert):
        return {"__alert__": value.to_dict()}
    if isinstance(value, deque):
        return {"__deque__": [_encode(v) for v in value], "maxlen": value.maxlen}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if hasattr(value, "__dict__"):
        return {"__object__": type(value).__name__, "vars": {k: _encode(v) for k, v in vars(value).items()}}
    raise TypeError(f"monitor state: cannot save a {type(value).__name__}")


def _decode(data: Any, current: Any = None) -> Any:
    """Rebuild what :func:`_encode` wrote. ``current``: the fresh value at the same place; an
    object is restored into a copy of it (attributes the state lacks keep their fresh values)."""
    if isinstance(data, list):
        return [_decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__ndarray__" in data:
        return np.asarray(data["__ndarray__"], dtype=np.dtype(data["dtype"]))
    if "__alert__" in data:
        return Alert(**data["__alert__"])
    if "__deque__" in data:
        return deque((_decode(v) for v in data["__deque__"]), maxlen=data["maxlen"])
    if "__tuple__" in data:
        return tuple(_decode(v) for v in data["__tuple__"])
    if "__dict__" in data:
        fresh = current if isinstance(current, dict) else {}
        return {_decode(k): _decode(v, fresh.get(_decode(k))) for k, v in data["__dict__"]}
    if "__object__" in data:
        if current is None or type(current).__name__ != data["__object__"]:
            raise ValueError(f"load_state_dict: the state holds a {data['__object__']} where this monitor has "
                             f"{type(current).__name__}: it was saved by another version of the monitor")
        obj = copy.copy(current)
        for name, value in data["vars"].items():
            setattr(obj, name, _decode(value, getattr(obj, name, None)))
        return obj
    raise ValueError(f"load_state_dict: unreadable entry in the monitor state: {sorted(data)[:3]}")


# -- spike score and skip list -------------------------------------------------------------------
def spike_score(monitor: Any) -> float:
    """Steps with an alert per 1,000 steps, over the last :data:`SPIKE_WINDOW` judged steps."""
    judged = monitor._judged
    if judged <= 0:
        return 0.0
    window = min(SPIKE_WINDOW, judged)
    steps = {a.step for a in monitor._alerts if a.step > judged - window}
    return 1000.0 * len(steps) / window


def record_skip(monitor: Any, alert: Alert) -> None:
    """skip_list: add the step of an alert that points at its batch and rewrite the JSON list
    (a list of step numbers, as in the alerts; steps already in the file are kept)."""
    if alert.kind not in _BATCH_ANOMALIES or alert.metric not in ("loss", "grad_norm"):
        return
    path = monitor.skip_list
    if monitor._skip_steps is None:  # first write: keep what an earlier run of this job recorded
        monitor._skip_steps = []
        if path.exists():
            try:
                monitor._skip_steps = [int(s) for s in json.loads(path.read_text())]
            except (ValueError, TypeError):
                logger.warning("[Monitor] %s is not a JSON list of steps; it is rewritten", path)
    if alert.step not in monitor._skip_steps:
        monitor._skip_steps = sorted([*monitor._skip_steps, alert.step])
        path.write_text(json.dumps(monitor._skip_steps) + "\n")
