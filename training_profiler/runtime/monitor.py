"""`watch_training`: a zero-configuration training monitor that alerts early, rarely falsely and
cheaply.

Per step, on the device and without a host sync: the loss, per-layer gradient norms (one fused
``torch._foreach_norm``) and their global norm, the GradScaler's scale; on a cadence also the
update-to-weight ratio per layer and the fp16/bf16 overflow / underflow fractions of every leaf
module's output (strided sample). Each step's values are one row of a small device buffer
(:mod:`.device_stats`); the loss and the global norm of each row are copied to pinned host memory
at once (non-blocking) so a NaN/Inf is reported with the exact step it happened, and the whole
buffer every ``transfer_every`` steps, when the host runs the detectors of :mod:`.detectors`.
On CPU, where a scalar read is a memory read, the loss and the norms are read as Python floats
instead and checked at once.
This module ties them together: it finds the model, owns the hooks and the step cycle, and emits
the alerts (:mod:`.alerts`), in step order. Nothing here ever raises into the training loop: an
internal error is logged once and switches that statistic off (or, outside any one statistic,
stops the monitor); under ``torch.distributed`` the ranks agree on it in the periodic all-reduce.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.optim.optimizer as _optim_hooks
from torch import nn

from .alerts import Alert, TrainingAlertError
from .detectors import HostDetectors
from .device_stats import FIXED, LOW_PRECISION, StatsBuffer, low_precision_fractions
from .state import apply_pending_state, load_monitor_state, monitor_state, record_skip
from .state import spike_score as _spike_score

__all__ = ["Alert", "TrainingAlertError", "TrainingMonitor", "watch_training"]

logger = logging.getLogger("training_profiler")

# what one rank's switch-off changes in the reduced statistics of every rank: agreed in the
# control row of the periodic all-reduce ("monitor": this rank's monitor stopped altogether)
_AGREED = ("loss", "grad_norm", "loss_scale", "update_ratio", "activation_precision", "monitor")
_RECORD_KEYS = {"loss": ("loss",), "grad_norm": ("grad_norm", "layer_grad_norms", "grad_overflow", "grad_underflow"),
                "loss_scale": ("loss_scale",), "update_ratio": ("update_ratio",),
                "activation_precision": ("activation_overflow", "activation_underflow")}


class TrainingMonitor:
    """The monitor behind :func:`watch_training`; use it as a decorator, a context manager, or
    from a framework's hooks (:meth:`begin_step` / :meth:`observe_step`).

    ``alerts`` and ``history`` are read after :meth:`flush` (they flush on access); hooks are
    removed by :meth:`close` (or on leaving the ``with`` block).

    ``on_alert(alert)`` is called once per :class:`Alert`, on the training thread inside a
    training step (or inside flush/close), in step order, after the alert has been logged and
    added to ``alerts``; on rank 0 only unless ``all_ranks``. An alert is handed out once every
    earlier step has been judged: a NaN/Inf at once (single process: the monitor judges the
    steps before it first, one host sync), the others when their batch reaches the host (at the
    latest every ``transfer_every`` steps; distributed, NaN/Inf waits for that too). Keep the
    callback quick. It may read ``monitor.alerts`` / ``monitor.history`` (they do not flush from
    inside it). An exception it raises is logged once and otherwise ignored: it never reaches
    the training loop, detection goes on and later alerts still reach the callback. To stop
    training on an alert, set a flag in the callback and check it in your loop.

    The monitor never raises into training: an internal error in one statistic is logged once
    (logger ``training_profiler``) and switches that statistic off; any other internal error
    stops the monitor. Under ``torch.distributed`` every rank switches off what any rank
    switched off, agreed in the periodic all-reduce, so the collectives stay in step.

    Opt-in actions (the default never changes training): ``on_alert="raise"`` stops training
    with a :class:`TrainingAlertError` at the step the first alert is handed out (on every
    rank); ``skip_list="skip_batches.json"`` keeps a JSON list of the steps whose batch looked
    anomalous (a loss or gradient-norm spike, a NaN/Inf), as Lightning Fabric's
    ``SpikeDetection`` does. :meth:`state_dict` / :meth:`load_state_dict` carry what the
    monitor learned across a restart (:mod:`.state`).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        *,
        warmup_steps: int = 100,
        alert_window: int = 50,
        log_every: int = 100,
        transfer_every: int = 10,
        precision_every: int = 50,
        vanishing_floor: float = 1e-7,
        on_alert: Callable[[Alert], Any] | str | None = None,
        history_size: int = 10_000,
        all_ranks: bool = False,
        skip_list: str | Path | None = None,
    ) -> None:
        for name, value in (("warmup_steps", warmup_steps), ("alert_window", alert_window),
                            ("log_every", log_every), ("transfer_every", transfer_every),
                            ("precision_every", precision_every), ("history_size", history_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"watch_training: {name}={value!r} must be a positive integer")
        if warmup_steps < 10:
            raise ValueError(f"watch_training: warmup_steps={warmup_steps} is too short to learn a baseline: "
                             "use at least 10")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"watch_training: model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"watch_training: optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if isinstance(on_alert, str) and on_alert != "raise":
            raise ValueError(f"watch_training: on_alert={on_alert!r}: use on_alert='raise' or a callable")
        if on_alert is not None and not callable(on_alert) and on_alert != "raise":
            raise TypeError(f"watch_training: on_alert must be callable or 'raise', got {type(on_alert).__name__}")
        if skip_list is not None and not isinstance(skip_list, (str, Path)):
            raise TypeError(f"watch_training: skip_list must be a file path, got {type(skip_list).__name__}")
        self.warmup_steps, self.alert_window, self.log_every = warmup_steps, alert_window, log_every
        self.transfer_every, self.precision_every = transfer_every, precision_every
        self.vanishing_floor = vanishing_floor
        self.raise_on_alert = on_alert == "raise"
        self.on_alert = None if self.raise_on_alert else on_alert
        self.skip_list = None if skip_list is None else Path(skip_list)
        self.all_ranks = all_ranks
        self.optimizer, self.scaler = optimizer, scaler
        self.model: nn.Module | None = None
        self.step_count = 0  # completed steps
        self._alerts: list[Alert] = []
        self._history: deque[dict[str, Any]] = deque(maxlen=history_size)
        self._stats: StatsBuffer | None = None  # the device side, once a model is attached
        self._detectors: HostDetectors | None = None  # the host side
        self._disabled: set[str] = set()
        self._hooks: list[Any] = []
        self._cadence_hooks: list[Any] = []
        self._closed = False
        self._in_step = False
        self._stopped = False  # after an internal error outside any one statistic
        self._draining = False  # distributed: stopped here, still joining the next collective to say so
        self._queue: list[Alert] = []  # found, waiting for every earlier step to be judged
        self._judged = 0  # every step up to this one has been judged
        self._catch_up = False  # a NaN/Inf alert waits for earlier steps: judge them now
        self._emitting = False
        self._on_alert_failed = False
        self._rank, self._world = 0, 1
        self._alert_error: TrainingAlertError | None = None  # on_alert="raise": raised by the next entry point
        self._skip_steps: list[int] | None = None  # skip_list: the steps written so far
        self._grads_by_caller = False  # a framework hook calls observe_gradients(): the optimizer hook leaves them
        self._restore: dict[str, Any] | None = None  # a state loaded before the model was attached
        if model is not None:
            self._attach(model)

    # -- public API ------------------------------------------------------------------------------
    @property
    def alerts(self) -> list[Alert]:
        """Every alert so far, in step order (see the class docstring for when each is handed out)."""
        self.flush()
        return sorted(self._alerts, key=lambda a: a.step)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per completed step (bounded): loss, grad_norm, loss_scale, layer_grad_norms
        and, on precision steps, update_ratio / activation_overflow / activation_underflow."""
        self.flush()
        return list(self._history)

    @property
    def layers(self) -> list[str]:
        """Layer names, in parameter order, that the per-layer lists of ``history`` refer to."""
        return list(self._stats.layers) if self._stats is not None else []

    def __call__(self, fn: Callable) -> Callable:
        """Decorate a train-step function; the wrapper has this monitor as ``.monitor``."""
        if not callable(fn):
            raise TypeError(f"watch_training: expected a train-step function, got {type(fn).__name__}")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.model is None and not self._closed:
                self._find_objects(args, kwargs)
            self._begin_step()
            try:
                out = fn(*args, **kwargs)
            except BaseException:
                self._abandon_step()  # the user's error propagates; the monitor stays consistent
                raise
            self._end_step(out)
            self._raise_alert()
            return out

        wrapper.monitor = self  # type: ignore[attr-defined]
        return wrapper

    def __enter__(self) -> "TrainingMonitor":
        if self.model is None:
            raise ValueError("watch_training as a context manager needs the model: "
                             "use `with watch_training(model=model, optimizer=opt) as monitor:`")
        self._begin_step()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def begin_step(self) -> None:
        """Mark the start of a training step, before its forward pass (a framework's batch-start
        hook): on a precision step this hooks the activations. Optional: without it, a step is
        only measured from its gradients on."""
        self._begin_step()

    def observe_step(self, loss: Any = None, *, model: nn.Module | None = None,
                     optimizer: torch.optim.Optimizer | None = None, scaler: Any = None) -> None:
        """Record one training step, once per step after its backward pass (a framework's
        pre-optimizer-step or batch-end hook). ``loss``: a scalar tensor, a number, or a dict
        with "loss". ``model`` / ``optimizer`` / ``scaler`` attach the monitor on the first
        call when it was created without them."""
        if self.model is None and not self._closed:
            if model is None:
                raise ValueError("observe_step: the monitor has no model yet: pass observe_step(loss, model=model)")
            self.attach(model, optimizer, scaler)
        if not self._in_step:
            self._begin_step()
        self._end_step(loss)
        self._raise_alert()

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scaler: Any = None) -> None:
        """Start watching ``model`` (a framework callback, before the first step); the optimizer
        and scaler given here replace none set before. Does nothing once a model is attached."""
        if self.model is not None or self._closed:
            return
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch_training: model must be a torch.nn.Module, got {type(model).__name__}")
        self.optimizer = self.optimizer if optimizer is None else optimizer
        self.scaler = self.scaler if scaler is None else scaler
        self._attach(model)

    def observe_gradients(self) -> None:
        """Record this step's gradients now: a framework's pre-optimizer-step hook, after the
        GradScaler unscaled them. From the first call on, the optimizer's own step hook leaves the
        gradients alone (a framework may call ``optimizer.step(closure)`` before the backward)."""
        self._grads_by_caller = True
        if self.model is None or self._closed or not self._in_step or self._draining or self._stopped:
            return
        try:
            self._write_grads()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    @property
    def spike_score(self) -> float:
        """Anomalies per 1,000 steps over the last 1,000 judged steps (OLMo's spike score): the
        steps with an alert, scaled to 1,000 steps; 0.0 before the first step."""
        return _spike_score(self)

    def state_dict(self) -> dict[str, Any]:
        """What the monitor has learned (baselines, the history tail, the step count, the alerts)
        as plain JSON data, for a checkpoint; judges the pending steps first (one sync)."""
        return monitor_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the run continues at its step count with its learned
        baselines, without a second warm-up. Before the model is attached, the state waits for it."""
        load_monitor_state(self, state)

    def step(self, loss: Any = None) -> None:
        """Context-manager mode: mark the end of one training step (pass its loss)."""
        self.observe_step(loss)
        self._begin_step()

    def flush(self) -> None:
        """Judge every step recorded so far (waits for the device: one sync). Never raises;
        distributed, a partial batch waits for its collective."""
        if self.model is None or self._closed or self._stopped or self._draining or self._emitting:
            return
        try:
            self._judge_all()
        except Exception as exc:  # noqa: BLE001 - never mask the caller's own error
            self._fail(exc)

    def close(self) -> None:
        """Judge what is pending and remove every hook; training code is left untouched. Never
        raises, so it cannot mask an exception that is leaving a ``with`` block."""
        if self._closed:
            return
        self._in_step = False
        self.flush()
        self._closed = True
        self._release_queue()  # alerts whose earlier steps will never be judged (a partial distributed batch)
        for handle in [*self._cadence_hooks, *self._hooks]:
            try:
                handle.remove()
            except Exception:  # noqa: BLE001, S110 - a hook that cannot be removed is already gone
                pass
        self._cadence_hooks.clear()
        self._hooks.clear()

    def export_history(self, path: str | Path) -> Path:
        """Write ``history`` to ``path``: ``.jsonl`` (one object per step) or ``.csv`` (one column
        per layer statistic)."""
        path = Path(path)
        rows = self.history
        if path.suffix == ".jsonl":
            with path.open("w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        elif path.suffix == ".csv":
            scalars = ("step", *FIXED, "grad_overflow", "grad_underflow")
            columns = list(scalars)
            for key in ("layer_grad_norms", "update_ratio"):
                columns += [f"{key}/{name}" for name in self._stats.layers]
            for key in ("activation_overflow", "activation_underflow"):
                columns += [f"{key}/{name}" for name in self._stats.act_layers]
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, columns, restval="")
                writer.writeheader()
                for row in rows:
                    flat = {k: row[k] for k in scalars if k in row}
                    for key, names in (("layer_grad_norms", self._stats.layers), ("update_ratio", self._stats.layers),
                                       ("activation_overflow", self._stats.act_layers),
                                       ("activation_underflow", self._stats.act_layers)):
                        for name, v in zip(names, row.get(key, ())):
                            flat[f"{key}/{name}"] = v
                    writer.writerow(flat)
        else:
            raise ValueError(f"export_history: unknown format {path.suffix!r} for {path}: use .jsonl or .csv")
        return path

    def plot_gradient_flow(self, path: str | Path) -> Path:
        """Save a PNG: per-layer gradient norms over depth (a few moments of training) and as a
        depth x time heat map. Needs matplotlib (``pip install 'training-profiler[plot]'``)."""
        try:
            from matplotlib.figure import Figure  # no pyplot: the user's backend stays untouched
        except ImportError:
            raise RuntimeError("plot_gradient_flow needs matplotlib: pip install 'training-profiler[plot]' "
                               "(or export_history() and plot the JSONL yourself)") from None
        rows = [r for r in self.history if "layer_grad_norms" in r]
        if not rows:
            raise ValueError("plot_gradient_flow: no gradient statistics recorded yet: run some training steps first")
        norms = np.array([r["layer_grad_norms"] for r in rows], dtype=float)
        logn = np.log10(np.maximum(norms, 1e-30))
        fig = Figure(figsize=(13, 4.5))
        ax1, ax2 = fig.subplots(1, 2)
        for i in sorted({0, len(rows) // 2, len(rows) - 1}):
            ax1.plot(logn[i], label=f"step {rows[i]['step']}")
        ax1.axhline(math.log10(self.vanishing_floor), color="red", ls="--", lw=0.8, label="vanishing floor")
        ax1.set(xlabel="layer (input → output)", ylabel="log10 gradient norm", title="gradient flow over depth")
        ax1.legend()
        im = ax2.imshow(logn.T, aspect="auto", origin="lower", cmap="viridis",
                        extent=(rows[0]["step"], rows[-1]["step"], 0, len(self._stats.layers)))
        ax2.set(xlabel="step", ylabel="layer", title="log10 gradient norm per layer over time")
        fig.colorbar(im, ax=ax2)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        return path

    def report(self, path: str | Path) -> Path:
        """Write a self-contained HTML report of this run: loss and gradient norm with the learned
        baseline and the alerts, per-layer gradient norms, fp16/bf16 overflow (needs matplotlib)."""
        from .report import write_monitor_report

        return write_monitor_report(self, path)

    # -- setup -------------------------------------------------------------------------------------
    def _find_objects(self, args: tuple, kwargs: dict) -> None:
        values = [*args, *kwargs.values()]
        modules = [v for v in values if isinstance(v, nn.Module)]
        if not modules:
            raise ValueError("watch_training: no torch.nn.Module among the train step's arguments: pass it "
                             "explicitly, e.g. @watch_training(model=model)")
        if self.optimizer is None:
            self.optimizer = next((v for v in values if isinstance(v, torch.optim.Optimizer)), None)
        if self.scaler is None:
            self.scaler = next((v for v in values if isinstance(v, torch.amp.GradScaler)), None)
        self._attach(max(modules, key=lambda m: sum(p.numel() for p in m.parameters())))

    def _unwrap_accelerate(self) -> None:
        """accelerate's AcceleratedOptimizer wraps the optimizer and carries the GradScaler: watch
        the inner optimizer, whose step runs after the scaler unscaled the gradients."""
        inner = getattr(self.optimizer, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and hasattr(self.optimizer, "gradient_state"):
            self.scaler = getattr(self.optimizer, "scaler", None) if self.scaler is None else self.scaler
            self.optimizer = inner

    def _attach(self, model: nn.Module) -> None:
        self._unwrap_accelerate()
        self._stats = StatsBuffer(model, self.transfer_every, flags=_AGREED)
        self.model = model
        self._detectors = HostDetectors(self._stats.layers, self._stats.act_layers, warmup_steps=self.warmup_steps,
                                        alert_window=self.alert_window, vanishing_floor=self.vanishing_floor)
        self._row = 0
        # per step: (step, has_loss, layers without gradients or None without any, has_scale, precision)
        self._row_meta: list[tuple[int, bool, tuple[int, ...] | None, bool, bool]] = []
        self._batch: list[tuple[int, bool, tuple[int, ...] | None, bool, bool]] | None = None  # of the copy in flight
        self._pending_fast: deque[tuple[int, int, bool, bool]] = deque()  # (row, step, has_loss, has_grad)
        self._precision = False  # this step measures the cadenced statistics
        # this step's gradient norms are in its row: the layers without gradients (None: not yet, or none)
        self._missing_layers: tuple[int, ...] | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self._act_stats: dict[int, torch.Tensor] = {}
        self._hooks.append(_optim_hooks.register_optimizer_step_pre_hook(self._optimizer_pre_hook))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._rank, self._world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if self._restore is not None:  # load_state_dict() came first (a framework restores before the first step)
            apply_pending_state(self)

    # -- never break training ------------------------------------------------------------------
    def _guarded(self, metric: str, fn: Callable, *args: Any) -> Any:
        """``fn(*args)``; an error switches ``metric`` off (logged once), never reaches training."""
        if metric in self._disabled:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the monitor must never break training
            self._disabled.add(metric)
            logger.warning("[Monitor] internal error while computing %s (%s: %s); this metric is disabled, "
                           "training continues", metric, type(exc).__name__, exc)
            if metric in _AGREED and self._world > 1:
                try:
                    self._stats.raise_flag(metric)  # the other ranks switch it off at the next collective
                except Exception as flag_exc:  # noqa: BLE001
                    self._fail(flag_exc)
            return None

    def _fail(self, exc: Exception) -> None:
        """An internal error outside any one statistic: monitoring stops (on every rank), training
        goes on. Distributed, this rank still joins the next periodic collective, which tells the
        others, so none is left waiting in it."""
        if self._stopped or self._draining:
            return
        logger.warning("[Monitor] internal error (%s: %s); monitoring stops, training continues",
                       type(exc).__name__, exc)
        self._snapshot = None
        try:
            self._remove_cadence_hooks()
        except Exception:  # noqa: BLE001, S110 - close() tries again
            pass
        if self._world > 1 and not self._closed:
            try:
                self._stats.raise_flag("monitor")
                self._draining = True
                return
            except Exception:  # noqa: BLE001 - cannot tell the others: nothing more to do here
                pass
        self._stop()

    def _stop(self) -> None:
        self._stopped, self._draining = True, False
        self._release_queue()  # what was found before the stop is still true

    # -- per step (device side, no host sync) -----------------------------------------------------
    def _precision_step(self, step: int) -> bool:
        return (step - 1) % self.precision_every == 0  # steps 1, 1 + every, ...: problems show at once

    def _begin_step(self) -> None:
        if self._closed or self.model is None:
            return
        self._in_step = True  # counted even when stopped: step_count stays the number of steps
        self._missing_layers = self._snapshot = None
        self._precision = self._precision_step(self.step_count + 1)
        if not self._precision:
            return
        self._act_stats = {}
        if self._draining or self._stopped:
            return
        try:
            self._stats.clear_cadenced(self._stats.rows[self._row])
            self._guarded("activation_precision", self._add_cadence_hooks)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _abandon_step(self) -> None:
        self._in_step = False
        self._snapshot = None
        try:
            self._remove_cadence_hooks()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _end_step(self, out: Any) -> None:
        if self._closed or self.model is None or not self._in_step:
            return
        self._in_step = False
        self.step_count += 1
        if self._stopped:
            return
        if not self._draining:
            try:
                self._record_row(self.step_count, out)
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
                if self._stopped:
                    return
        self._row += 1  # on every rank, whatever failed: the collectives depend on it
        try:
            self._after_row()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _record_row(self, step: int, out: Any) -> None:
        """The step's row: the gradient norms are usually in it already (the optimizer hook wrote
        them there); the loss joins them (on CPU a scalar read into the host row), and on CPU the
        row is checked for NaN/Inf at once."""
        if self._cadence_hooks:
            self._remove_cadence_hooks()
        stats, r = self._stats, self._row
        if self._missing_layers is None:  # no optimizer step was seen with gradients: read them now
            self._write_grads()
        has_loss = bool(self._guarded("loss", stats.write_loss, r, out))
        missing = self._missing_layers
        scaler = self.scaler
        has_scale = scaler is not None and getattr(scaler, "_scale", None) is not None
        if has_scale:
            self._guarded("loss_scale", stats.write_scale, stats.rows[r], scaler._scale)
            has_scale = "loss_scale" not in self._disabled
        if self._precision and self._act_stats:
            self._guarded("activation_precision", stats.write_act_stats, stats.rows[r], self._act_stats)
        if stats.fast.cuda:  # on CPU the queue is empty: each step is checked at its end
            self._drain_fast(wait=False)  # before the copy below reuses the host slot of step - transfer_every
            stats.fast.copy(r, stats.rows[r], r)
            self._pending_fast.append((r, step, has_loss, missing is not None))
        else:  # a buffer in host memory: check this step now
            values = stats.transfer.view[r].tolist() if stats.host_rows is None else stats.host_rows[r]
            self._check_finite(values, step, has_loss, missing is not None)
        self._row_meta.append((step, has_loss, missing, has_scale, self._precision))

    def _after_row(self) -> None:
        """The periodic work after a step's row is complete."""
        if not self._draining:
            if self._catch_up and self._world == 1:  # a NaN/Inf alert waits: judge the steps before it
                self._judge_all()
                return
        if self._row == self.transfer_every:
            self._transfer_batch()
        elif self._batch is not None and not self._draining and self._stats.transfer.ready(0):
            self._process_batch()

    def _write_grads(self) -> None:
        self._missing_layers = self._guarded("grad_norm", self._stats.write_grads, self._row, self._precision)

    # optimizer hooks are global (they see every optimizer): act only for ours
    def _is_ours(self, optimizer: torch.optim.Optimizer) -> bool:
        if self.optimizer is not None:
            return optimizer is self.optimizer
        if any(id(p) in self._stats.param_ids for g in optimizer.param_groups for p in g["params"]):
            self.optimizer = optimizer  # discovered: the step function used a global optimizer
            return True
        return False

    def _optimizer_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._in_step or self._draining or self._stopped:
            return
        try:
            if optimizer is not self.optimizer and not self._is_ours(optimizer):
                return
            if not self._grads_by_caller:
                self._write_grads()
            if self._precision:  # the update ratio: the post-step hook is there on precision steps only
                self._snapshot = self._guarded("update_ratio", self._stats.snapshot)
                if self._snapshot is not None:
                    self._cadence_hooks.append(optimizer.register_step_post_hook(self._optimizer_post_hook))
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _optimizer_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None or not self._in_step:
            return
        try:
            self._guarded("update_ratio", self._stats.write_update_ratio, self._stats.rows[self._row], self._snapshot)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        self._snapshot = None

    def _add_cadence_hooks(self) -> None:
        for i, (_, module) in enumerate(self._stats.act_modules):
            self._cadence_hooks.append(module.register_forward_hook(functools.partial(self._act_hook, i)))

    def _remove_cadence_hooks(self) -> None:
        for handle in self._cadence_hooks:
            handle.remove()
        self._cadence_hooks.clear()

    def _act_hook(self, index: int, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dtype in LOW_PRECISION:
            self._guarded("activation_precision", self._act_stat, index, output.detach())

    def _act_stat(self, index: int, out: torch.Tensor) -> None:
        self._act_stats[index] = low_precision_fractions(out)

    # -- host side -------------------------------------------------------------------------------------
    def _transfer_batch(self) -> None:
        """Ship the buffer's rows to the host (non-blocking); they are judged once they have landed.
        Distributed: first the all-reduce, on every rank at the same step (even on a rank whose
        monitor has stopped, which says so in the control row and then leaves)."""
        n, meta = self._row, self._row_meta
        self._row, self._row_meta = 0, []  # first: whatever fails below, the next step has a row
        stats = self._stats
        stats.store_host_rows(n)
        if self._batch is not None and not self._draining:  # the previous copy: long done unless the GPU is far behind
            try:
                stats.transfer.wait(0)
                self._process_batch()
            except Exception as exc:  # noqa: BLE001 - this rank must still join the collective below
                self._fail(exc)
            if self._stopped:  # agreed in the previous collective (or single process): no collective
                return
        if self._world > 1:  # reduced statistics: the mean over ranks (DDP grads are already equal)
            try:
                torch.distributed.all_reduce(stats.buf)
            except Exception as exc:  # noqa: BLE001 - the process group itself failed
                self._fail(exc)
                self._stop()
                return
            if self._draining:
                self._stop()  # the others read "monitor" in this collective's control row
                return
            stats.buf.div_(self._world)
            stats.transfer.copy(0, stats.buf, slice(None))  # with the control row
        else:
            stats.transfer.copy(0, stats.buf[:n], slice(0, n))
        self._batch = meta
        if stats.transfer.ready(0):
            self._process_batch()
        if self._in_step and 0 < n < self.transfer_every:  # a flush inside a step: its row moves to row 0,
            stats.move_row(n)  # after the copy above (on CPU the buffer is the host side)

    def _judge_all(self) -> None:
        """Judge every step recorded so far (single process: ships a partial batch; one sync)."""
        self._catch_up = False
        self._drain_fast(wait=True)
        if self._row and self._world == 1:
            self._transfer_batch()
        if self._batch is not None:
            self._stats.transfer.wait(0)
            self._process_batch()

    def _drain_fast(self, wait: bool) -> None:
        """Check for NaN/Inf the loss and global gradient norm of each step whose copy has landed."""
        fast = self._stats.fast
        while self._pending_fast:
            row, step, has_loss, has_grad = self._pending_fast[0]
            if not fast.ready(row):
                if not wait and len(self._pending_fast) < self.transfer_every:
                    break
                fast.wait(row)
            self._pending_fast.popleft()
            self._check_finite(fast.view[row].tolist(), step, has_loss, has_grad)

    def _check_finite(self, values: list[float], step: int, has_loss: bool, has_grad: bool) -> None:
        """NaN/Inf in the loss or the global gradient norm of a row that has reached the host (as
        Python floats)."""
        loss = values[0]
        if has_loss and not math.isfinite(loss):  # the common case: a float check and a sum
            self._guarded("detectors", self._detectors.check_finite, step, "loss", loss, self.scaler)
        norm = self._stats.nonfinite_norm(values) if has_grad else None
        if norm is not None:
            self._guarded("detectors", self._detectors.check_finite, step, "grad_norm", norm, self.scaler)
        if self._detectors.pending:
            self._catch_up = any(a.step > self._judged for a in self._detectors.pending)
            self._emit()

    def _process_batch(self) -> None:
        meta, self._batch = self._batch or [], None
        view = self._stats.transfer.view
        block = view[: len(meta)].copy()
        norms = self._guarded("history", self._stats.grad_norms, block)
        layers = small = None
        if norms is not None:  # per-layer norms as rows (as in the records), checked for the batch at once
            layers = self._guarded("history", self._stats.layer_rows, norms, meta)
            small = self._guarded("detectors", self._detectors.any_small, layers, [row[0] for row in norms])
        agreed: set[str] = set()
        if self._world > 1:
            agreed = self._stats.raised_flags(view[self._stats.control])
            if "monitor" in agreed:
                logger.warning("[Monitor] monitoring was stopped on another rank after an internal error; "
                               "it stops here too")
                self._stop()
                return
            for name in sorted(agreed - self._disabled):
                logger.warning("[Monitor] %s was switched off on another rank after an internal error; it is "
                               "off here too", name)
                self._disabled.add(name)
                self._stats.raise_flag(name)  # every rank keeps flagging it from now on
        for i, (step, has_loss, missing, has_scale, precision) in enumerate(meta):
            rec = None if layers is None else self._guarded(
                "history", self._record, step, has_loss, missing, has_scale, precision, block[i], norms[i][0],
                layers[i], agreed)
            if rec is not None:
                self._guarded("detectors", self._detectors.judge, rec, layers[i], None if small is None else small[i])
            self._judged = step
            self._emit()
            if rec is not None and step % self.log_every == 0 and self._rank == 0:
                line = self._guarded("status", self._detectors.status, rec)
                if line is not None:
                    logger.info(line)

    def _record(self, step: int, has_loss: bool, missing: tuple[int, ...] | None, has_scale: bool, precision: bool,
                values: np.ndarray, global_norm: float, layers: list[float], switched_off: set[str]) -> dict[str, Any]:
        rec = self._stats.record(step, has_loss, missing, has_scale, precision, values, global_norm, layers)
        for name in switched_off:  # the reduced value mixes measured and unmeasured ranks: not measured
            for key in _RECORD_KEYS.get(name, ()):
                rec.pop(key, None)
        self._history.append(rec)
        return rec

    # -- alerts --------------------------------------------------------------------------------
    def _emit(self) -> None:
        """Log and hand out, in step order, the alerts of every step judged so far."""
        if self._detectors.pending:
            self._queue += self._detectors.pending
            self._detectors.pending.clear()
        elif not self._queue:  # the common case: nothing to say
            return
        if self._emitting or not any(a.step <= self._judged for a in self._queue):
            return
        ready = sorted((a for a in self._queue if a.step <= self._judged), key=lambda a: a.step)
        self._queue = [a for a in self._queue if a.step > self._judged]
        self._emitting = True  # on_alert may read monitor.alerts: no flush from inside it
        try:
            for alert in ready:
                self._deliver(alert)
        finally:
            self._emitting = False

    def _release_queue(self) -> None:
        """Hand out every alert found, judged or not (the monitor is closing or stopping)."""
        if self._detectors is not None:
            self._judged = max([self._judged, *(a.step for a in self._queue),
                                *(a.step for a in self._detectors.pending)])
            self._emit()

    def _deliver(self, alert: Alert) -> None:
        self._alerts.append(alert)
        if self.raise_on_alert and self._alert_error is None:  # every rank: all of them stop
            self._alert_error = TrainingAlertError(alert)
        if self.skip_list is not None and self._rank == 0:
            self._guarded("skip_list", record_skip, self, alert)
        if self._rank != 0 and not self.all_ranks:
            return
        logger.warning(alert.message)
        if self.on_alert is None:
            return
        try:
            self.on_alert(alert)
        except Exception as exc:  # noqa: BLE001 - the user's callback must not break training either
            if not self._on_alert_failed:
                self._on_alert_failed = True
                logger.warning("[Monitor] on_alert raised %s: %s; the alert is logged and in monitor.alerts, "
                               "monitoring goes on (reported once)", type(exc).__name__, exc, exc_info=True)

    def _raise_alert(self) -> None:
        """on_alert="raise": stop training, outside every guard, once an alert was handed out."""
        if self._alert_error is not None:
            error, self._alert_error = self._alert_error, None
            raise error


def watch_training(fn: Callable | None = None, /, *, model: nn.Module | None = None,
                   optimizer: torch.optim.Optimizer | None = None, scaler: Any = None,
                   **options: Any) -> Any:
    """Watch a training step for exploding / vanishing gradients, NaN/Inf and fp16 trouble.

    ``@watch_training`` or ``@watch_training(warmup_steps=100, alert_window=50)`` on a train-step
    function (the model, optimizer and GradScaler are found among its arguments; an optimizer used
    as a global is found when it steps), or ``with watch_training(model=m, optimizer=o) as mon:``
    calling ``mon.step(loss)`` once per step. Options: see :class:`TrainingMonitor`.
    """
    monitor = TrainingMonitor(model, optimizer, scaler, **options)
    if fn is not None:
        return monitor(fn)
    return monitor


def run_museum_demo(museum: str | Path) -> int:
    """The demo's monitor section: run the runtime failure museum and print each run's alerts.
    Returns the number of runs that did not raise the alert they exist to show (0 = all good)."""
    import importlib.util

    def load(name: str) -> Any:
        spec = importlib.util.spec_from_file_location(f"_museum_{name}", Path(museum) / "runtime" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    cases = [
        ("learning rate too high: MLP regression, LR ramped to 40x after warm-up",
         "lr_too_high", {"steps": 400, "high_lr": 2.0}, "grad_norm"),
        ("the same run at a sane learning rate, 1000 steps", "lr_too_high", {"steps": 1000}, None),
        ("100-layer plain MLP (tanh, no residuals)", "deep_plain_mlp", {"steps": 10}, "layer_grad_norm"),
        ("fp16 autocast on unnormalized inputs", "fp16_overflow", {"steps": 6}, "activation_overflow"),
    ]
    threads, was_disabled = torch.get_num_threads(), logger.disabled
    torch.set_num_threads(1)  # tiny models: one thread is fastest and fair to a shared machine
    logger.disabled = True  # the alerts are printed below, once
    failures = 0
    try:
        for title, name, kwargs, expected in cases:
            monitor = load(name).run(**kwargs)
            alerts = monitor.alerts
            print(f"\n-- {title}: {monitor.step_count} steps, {len(alerts)} alert(s)")
            for alert in alerts[:4]:
                print(f"   {alert.message}")
            ok = any(a.metric == expected for a in alerts) if expected else not alerts
            failures += not ok
    finally:
        torch.set_num_threads(threads)
        logger.disabled = was_disabled
    return failures
