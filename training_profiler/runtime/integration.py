"""What the framework callbacks (:mod:`.lightning`, :mod:`.transformers`) have in common: the
statistics they hand to the framework's loggers, and hooks that never raise into training.

Only steps the monitor has already judged are reported: their values reached the host with the
periodic transfer, so reporting them costs no host sync (a step's values are logged up to
``transfer_every`` steps after it ran).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Any, Callable

from .alerts import TrainingAlertError

if TYPE_CHECKING:
    from .monitor import TrainingMonitor

__all__ = ["PREFIX", "StatsReporter", "never_raises"]

logger = logging.getLogger("training_profiler")

PREFIX = "monitor/"  # every logged key starts with it


def never_raises(hook: Callable) -> Callable:
    """A callback hook whose errors are logged (once per hook) instead of reaching the
    framework; only the opt-in ``on_alert="raise"`` stops training."""

    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(self, *args, **kwargs)
        except TrainingAlertError:
            raise
        except Exception as exc:  # noqa: BLE001 - the monitor must never break training
            failed = self.__dict__.setdefault("_failed_hooks", set())
            if hook.__name__ not in failed:
                failed.add(hook.__name__)
                logger.warning("[Monitor] %s.%s raised %s: %s; training continues (reported once)",
                               type(self).__name__, hook.__name__, type(exc).__name__, exc)
            return None

    return wrapper


class StatsReporter:
    """Turns the monitor's newly judged steps into one flat dict of floats for a framework logger."""

    def __init__(self, monitor: TrainingMonitor) -> None:
        self.monitor = monitor
        self._last_step = 0  # the last judged step already reported
        self._last_scale = math.nan
        self.skipped_steps = 0  # GradScaler backoffs seen (each is a skipped optimizer step)

    def new_statistics(self) -> dict[str, float]:
        """The latest judged step's statistics, or {} when no step was judged since the last call.
        Keys: ``monitor/loss``, ``grad_norm``, ``loss_scale`` (those measured), ``skipped_steps``,
        ``alerts``, ``spike_score``, ``step`` (the step the values belong to)."""
        monitor = self.monitor
        new = []
        for rec in reversed(monitor._history):  # no flush: only what has reached the host
            if rec["step"] <= self._last_step:
                break
            new.append(rec)
        if not new:
            return {}
        new.reverse()
        for rec in new:  # a scale that went down: the GradScaler skipped that step
            scale = rec.get("loss_scale", math.nan)
            if scale < self._last_scale:
                self.skipped_steps += 1
            if not math.isnan(scale):
                self._last_scale = scale
        latest = new[-1]
        self._last_step = latest["step"]
        stats = {PREFIX + key: float(latest[key]) for key in ("loss", "grad_norm", "loss_scale") if key in latest}
        stats[PREFIX + "skipped_steps"] = float(self.skipped_steps)
        stats[PREFIX + "alerts"] = float(len(monitor._alerts))
        stats[PREFIX + "spike_score"] = monitor.spike_score
        stats[PREFIX + "step"] = float(latest["step"])
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step, "last_scale": self._last_scale, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_step, self._last_scale = int(state["last_step"]), float(state["last_scale"])
        self.skipped_steps = int(state["skipped_steps"])
