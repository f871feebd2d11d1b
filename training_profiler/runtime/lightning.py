"""`WatchTrainingCallback` for Lightning's ``Trainer`` (``lightning.pytorch`` and
``pytorch_lightning``): the monitor of :func:`~training_profiler.runtime.watch_training` in one line::

    trainer = Trainer(callbacks=[WatchTrainingCallback(warmup_steps=100)])

The model is the LightningModule, the optimizer the Trainer's (when it has one) and the GradScaler
the precision plugin's (``precision="16-mixed"``). The gradients are read in
``on_before_optimizer_step``, after the precision plugin unscaled them; with gradient accumulation
one monitor step is one optimizer step. Statistics go to the Trainer's loggers via
``LightningModule.log_dict`` on the Trainer's logging steps (``log_every_n_steps``; the latest
judged step's ``monitor/grad_norm``, ``monitor/spike_score``, ...), alerts to the
``training_profiler`` logger as with the decorator, and the monitor's state into the checkpoint,
so a run resumed with ``fit(ckpt_path=...)`` keeps its learned baseline.
"""

from __future__ import annotations

import importlib
from typing import Any

from .integration import StatsReporter, never_raises
from .monitor import TrainingMonitor

__all__ = ["WatchTrainingCallback"]


def _callback_bases() -> tuple[type, ...]:
    """Lightning's Callback class of every Lightning package installed: a Trainer accepts only its own."""
    bases = []
    for package in ("lightning.pytorch", "pytorch_lightning"):
        try:
            bases.append(importlib.import_module(package).Callback)
        except ImportError:
            pass
    if not bases:
        raise ImportError("training_profiler.runtime.lightning needs Lightning: pip install lightning "
                          "(or pytorch-lightning)")
    return tuple(bases)


class WatchTrainingCallback(*_callback_bases()):  # type: ignore[misc]
    """Watch a Lightning training run; ``callback.monitor`` is the :class:`TrainingMonitor`
    (``callback.monitor.alerts``). Keyword options: those of ``watch_training`` (``warmup_steps``,
    ``alert_window``, ``on_alert`` (a callable or ``"raise"``), ``skip_list``, ...)."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.monitor = TrainingMonitor(**options)
        self._reporter = StatsReporter(self.monitor)
        self._in_step = False  # with gradient accumulation a step spans several batches
        self._stepped = False  # the optimizer stepped in this batch (not an accumulation batch)

    # -- the step cycle ----------------------------------------------------------------------------
    @never_raises
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        self.monitor.attach(pl_module, optimizers[0] if len(optimizers) == 1 else None, scaler)

    @never_raises
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._in_step:
            self._in_step = True
            self.monitor.begin_step()

    @never_raises
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.monitor.observe_gradients()
        self._stepped = True

    @never_raises
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._stepped:
            return
        self._stepped = self._in_step = False
        self.monitor.observe_step(outputs)  # on_alert="raise": raises here, and Lightning stops
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None and not connector.should_update_logs:
            return  # Lightning writes its loggers every log_every_n_steps; log_dict costs ms: call it only then
        stats = self._reporter.new_statistics()
        if stats:
            pl_module.log_dict(stats, on_step=True, on_epoch=False)

    @never_raises
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.monitor.flush()

    @never_raises
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self.monitor.close()

    # -- checkpoints -------------------------------------------------------------------------------
    @never_raises
    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict(), "reporter": self._reporter.state_dict()}

    @never_raises
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state_dict["monitor"])
        self._reporter.load_state_dict(state_dict["reporter"])
