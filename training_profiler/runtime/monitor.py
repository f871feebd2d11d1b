"""`watch_training`: a zero-configuration training monitor that alerts early, rarely falsely and
cheaply.

Per step, on the device and without a host sync: the loss, per-layer gradient norms (one fused
``torch._foreach_norm``) and their global norm, the GradScaler's scale; on a cadence also the
update-to-weight ratio per layer and the fp16/bf16 overflow / underflow fractions of every leaf
module's output (strided sample). Each step's values are one row of a small device buffer
(:mod:`.device_stats`); the loss and the global norm of each row are copied to pinned host memory
at once (non-blocking) so a NaN/Inf is reported with the exact step it happened, and the whole
buffer every ``transfer_every`` steps, when the host runs the detectors of :mod:`.detectors`.
This module ties them together: it finds the model, owns the hooks and the step cycle, and emits
the alerts (:mod:`.alerts`). Nothing here ever raises into the training loop: an internal error
is logged once and that metric is switched off.
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

from .alerts import Alert
from .detectors import HostDetectors
from .device_stats import FIXED, LOW_PRECISION, StatsBuffer, low_precision_fractions

__all__ = ["Alert", "TrainingMonitor", "watch_training"]

logger = logging.getLogger("training_profiler")


class TrainingMonitor:
    """The monitor behind :func:`watch_training`; use it as a decorator, a context manager, or
    from a framework's hooks (:meth:`begin_step` / :meth:`observe_step`).

    ``alerts`` and ``history`` are read after :meth:`flush` (they flush on access); hooks are
    removed by :meth:`close` (or on leaving the ``with`` block).
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
        on_alert: Callable[[Alert], Any] | None = None,
        history_size: int = 10_000,
        all_ranks: bool = False,
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
        if on_alert is not None and not callable(on_alert):
            raise TypeError(f"watch_training: on_alert must be callable, got {type(on_alert).__name__}")
        self.warmup_steps, self.alert_window, self.log_every = warmup_steps, alert_window, log_every
        self.transfer_every, self.precision_every = transfer_every, precision_every
        self.vanishing_floor = vanishing_floor
        self.on_alert = on_alert
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
        if model is not None:
            self._attach(model)

    # -- public API ------------------------------------------------------------------------------
    @property
    def alerts(self) -> list[Alert]:
        """Every alert so far, by step (NaN/Inf alerts are raised at once, the others when their
        batch reaches the host)."""
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
            self.optimizer = self.optimizer if optimizer is None else optimizer
            self.scaler = self.scaler if scaler is None else scaler
            self._attach(model)
        if not self._in_step:
            self._begin_step()
        self._end_step(loss)

    def step(self, loss: Any = None) -> None:
        """Context-manager mode: mark the end of one training step (pass its loss)."""
        self.observe_step(loss)
        self._begin_step()

    def flush(self) -> None:
        """Process every step recorded so far (waits for the device: one sync)."""
        if self.model is None or self._closed:
            return
        self._drain_fast(wait=True)
        if self._row and self._world == 1:  # distributed: partial batches stay until the next full one
            self._transfer_batch()
        if self._batch is not None:
            self._stats.transfer.wait(0)
            self._process_batch()

    def close(self) -> None:
        """Process what is pending and remove every hook; training code is left untouched."""
        if self._closed:
            return
        self._in_step = False
        self._remove_cadence_hooks()
        self.flush()
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._closed = True

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
        self._attach(max(modules, key=lambda m: sum(p.numel() for p in m.parameters())))
        if self.optimizer is None:
            self.optimizer = next((v for v in values if isinstance(v, torch.optim.Optimizer)), None)
        if self.scaler is None:
            self.scaler = next((v for v in values if isinstance(v, torch.amp.GradScaler)), None)

    def _attach(self, model: nn.Module) -> None:
        self._stats = StatsBuffer(model, self.transfer_every)
        self.model = model
        self._detectors = HostDetectors(self._stats.layers, self._stats.act_layers, warmup_steps=self.warmup_steps,
                                        alert_window=self.alert_window, vanishing_floor=self.vanishing_floor)
        self._row = 0
        self._row_meta: list[tuple[int, bool, bool, bool]] = []  # (step, has_loss, has_grad, precision)
        self._batch: list[tuple[int, bool, bool, bool]] | None = None  # row meta of the copy in flight
        self._pending_fast: deque[tuple[int, int, bool, bool]] = deque()  # (row, step, has_loss, has_grad)
        self._grads_done = False
        self._snapshot: list[torch.Tensor] | None = None
        self._act_stats: dict[int, torch.Tensor] = {}
        self._hooks.append(_optim_hooks.register_optimizer_step_pre_hook(self._optimizer_pre_hook))
        self._hooks.append(_optim_hooks.register_optimizer_step_post_hook(self._optimizer_post_hook))
        self._rank, self._world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._rank, self._world = torch.distributed.get_rank(), torch.distributed.get_world_size()

    # -- never break training ------------------------------------------------------------------
    def _guarded(self, metric: str, fn: Callable, *args: Any) -> Any:
        if metric in self._disabled:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the monitor must never break training
            self._disabled.add(metric)
            logger.warning("[Monitor] internal error while computing %s (%s: %s); this metric is disabled, "
                           "training continues", metric, type(exc).__name__, exc)
            return None

    # -- per step (device side, no host sync) -----------------------------------------------------
    def _precision_step(self, step: int) -> bool:
        return (step - 1) % self.precision_every == 0  # steps 1, 1 + every, ...: problems show at once

    def _begin_step(self) -> None:
        if self._closed or self.model is None:
            return
        self._in_step = True
        self._stats.buf[self._row].fill_(math.nan)
        self._grads_done = False
        self._snapshot = None
        self._act_stats = {}
        if self._precision_step(self.step_count + 1):
            self._guarded("activation_precision", self._add_cadence_hooks)

    def _abandon_step(self) -> None:
        self._in_step = False
        self._snapshot = None
        self._remove_cadence_hooks()

    def _end_step(self, out: Any) -> None:
        if self._closed or self.model is None or not self._in_step:
            return
        self._in_step = False
        self.step_count += 1
        step = self.step_count
        self._remove_cadence_hooks()
        stats = self._stats
        row = stats.buf[self._row]
        has_loss = self._guarded("loss", stats.write_loss, row, out) or False
        if not self._grads_done:
            self._write_grads(row)
        if self.scaler is not None and getattr(self.scaler, "_scale", None) is not None:
            self._guarded("loss_scale", stats.write_scale, row, self.scaler._scale)
        precision = self._precision_step(step)
        if precision and self._act_stats:
            self._guarded("activation_precision", stats.write_act_stats, row, self._act_stats)
        self._drain_fast(wait=False)  # before the copy below reuses the host slot of step - transfer_every
        stats.fast.copy(self._row, row[:2], self._row)
        self._pending_fast.append((self._row, step, has_loss, self._grads_done))
        self._row_meta.append((step, has_loss, self._grads_done, precision))
        self._row += 1
        if not stats.fast.cuda:
            self._drain_fast(wait=False)  # a CPU "copy" has landed already: report this step now
        if self._row == self.transfer_every:
            self._guarded("transfer", self._transfer_batch)
        elif self._batch is not None and stats.transfer.ready(0):
            self._guarded("transfer", self._process_batch)

    def _write_grads(self, row: torch.Tensor) -> None:
        if self._guarded("grad_norm", self._stats.write_grads, row, self._precision_step(self.step_count + 1)):
            self._grads_done = True

    # optimizer hooks are global (they see every optimizer): act only for ours
    def _is_ours(self, optimizer: torch.optim.Optimizer) -> bool:
        if self.optimizer is not None:
            return optimizer is self.optimizer
        if any(id(p) in self._stats.param_ids for g in optimizer.param_groups for p in g["params"]):
            self.optimizer = optimizer  # discovered: the step function used a global optimizer
            return True
        return False

    def _optimizer_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._in_step or not self._is_ours(optimizer):
            return
        self._write_grads(self._stats.buf[self._row])
        if self._precision_step(self.step_count + 1):
            self._snapshot = self._guarded("update_ratio", self._stats.snapshot)

    def _optimizer_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None or not self._in_step or optimizer is not self.optimizer:
            return
        self._guarded("update_ratio", self._stats.write_update_ratio, self._stats.buf[self._row], self._snapshot)
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
        """Ship the filled buffer to the host (non-blocking); it is judged once it has landed."""
        transfer = self._stats.transfer
        if self._batch is not None:  # the previous copy: long done unless the GPU is far behind
            transfer.wait(0)
            self._process_batch()
        buf = self._stats.buf
        if self._world > 1:  # reduced statistics: the mean over ranks (DDP grads are already equal)
            torch.distributed.all_reduce(buf)
            buf.div_(self._world)
        n = self._row
        transfer.copy(0, buf[:n], slice(0, n))
        self._batch, self._row_meta = self._row_meta[:n], self._row_meta[n:]
        self._row = 0
        if transfer.ready(0):
            self._process_batch()

    def _drain_fast(self, wait: bool) -> None:
        """Report NaN/Inf in loss or global gradient norm of each step whose copy has landed."""
        fast = self._stats.fast
        while self._pending_fast:
            row, step, has_loss, has_grad = self._pending_fast[0]
            if not fast.ready(row):
                if not wait and len(self._pending_fast) < self.transfer_every:
                    return
                fast.wait(row)
            self._pending_fast.popleft()
            values = fast.view[row] if fast.cuda else self._stats.transfer.view[row, :2]
            if has_loss:
                self._detectors.check_finite(step, "loss", float(values[0]), self.scaler)
            if has_grad:
                self._detectors.check_finite(step, "grad_norm", float(values[1]), self.scaler)
            self._emit()

    def _process_batch(self) -> None:
        meta, self._batch = self._batch or [], None
        block = self._stats.transfer.view[: len(meta)].copy()
        for (step, has_loss, has_grad, precision), values in zip(meta, block):
            rec = self._stats.record(step, has_loss, has_grad, values)
            self._history.append(rec)
            self._guarded("detectors", self._judge, rec)
            if step % self.log_every == 0 and self._rank == 0:
                line = self._detectors.status(rec)
                if line is not None:
                    logger.info(line)

    def _judge(self, rec: dict[str, Any]) -> None:
        try:
            self._detectors.judge(rec)
        finally:  # alerts found before an error are still reported
            self._emit()

    # -- alerts --------------------------------------------------------------------------------
    def _emit(self) -> None:
        """Log and hand out the alerts the detectors have found."""
        found, self._detectors.pending = self._detectors.pending, []
        for alert in found:
            self._alerts.append(alert)
            if self._rank == 0 or self.all_ranks:
                logger.warning(alert.message)
                if self.on_alert is not None:
                    self.on_alert(alert)


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
