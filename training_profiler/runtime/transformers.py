"""`WatchTrainingCallback` for the Hugging Face ``Trainer`` (a ``transformers.TrainerCallback``)::

    trainer = Trainer(model=model, args=args, callbacks=[WatchTrainingCallback()])

The model, the optimizer and the GradScaler come from the Trainer (the accelerate-wrapped
optimizer carries the scaler). The Trainer hands its callbacks no gradient norm and clips the
gradients before ``on_pre_optimizer_step`` (``max_grad_norm=1.0`` by default), so the gradients
are read at the end of the backward pass instead, before clipping, from a hook on the loss the
model returns (``outputs.loss``). Under fp16 with a GradScaler they are read in
``on_pre_optimizer_step``, unscaled (the Trainer's own clipping unscales them; without clipping
the callback unscales them as the optimizer step would). The loss of a step is the mean of its
micro-batches' ``outputs.loss``.

Statistics (``monitor/grad_norm``, ``monitor/spike_score``, ...) are added to the Trainer's logs in
``on_log``: ``trainer.state.log_history`` and the callbacks after this one see them. The callback
moves itself to the front of the Trainer's callbacks when the Trainer first calls it
(``on_init_end``, or ``on_train_begin`` when added with ``trainer.add_callback``), so that the
``report_to`` integrations (TensorBoard, W&B, ...), which the Trainer lists before the user's
callbacks, log these keys too. Alerts go to the ``training_profiler`` logger. The monitor's state is written to ``monitor_state.json``
in each checkpoint folder and read back when training resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import torch

from .integration import StatsReporter, never_raises
from .monitor import TrainingMonitor

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import CallbackHandler
except ImportError:
    raise ImportError("training_profiler.runtime.transformers needs Hugging Face transformers: "
                      "pip install transformers") from None

__all__ = ["STATE_FILE", "WatchTrainingCallback"]

logger = logging.getLogger("training_profiler")

STATE_FILE = "monitor_state.json"  # in each checkpoint-N folder


def _loss_of(output: Any) -> torch.Tensor | None:
    """The loss a model returned: ``outputs.loss`` / ``outputs["loss"]``, or a scalar tensor."""
    loss = output.get("loss") if hasattr(output, "get") else getattr(output, "loss", output)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    return None


class WatchTrainingCallback(TrainerCallback):
    """Watch a Hugging Face Trainer run; ``callback.monitor`` is the :class:`TrainingMonitor`
    (``callback.monitor.alerts``). Keyword options: those of ``watch_training`` (``warmup_steps``,
    ``alert_window``, ``on_alert`` (a callable or ``"raise"``), ``skip_list``, ...)."""

    def __init__(self, **options: Any) -> None:
        self.monitor = TrainingMonitor(**options)
        self._reporter = StatsReporter(self.monitor)
        self._in_step = False
        self._loss_sum: torch.Tensor | None = None  # this step's micro-batch losses (on the device)
        self._micro_batches = 0
        self._observed = False  # the gradients of this step were read at the end of a backward
        self._hook = None
        self._gradient_state = None  # accelerate's: says which micro-batch completes the step

    # -- setup ---------------------------------------------------------------------------------
    def _move_to_front(self) -> None:
        """Be the first of the Trainer's callbacks, so that every callback's ``on_log`` (the
        ``report_to`` integrations come before the user's callbacks) sees the monitor's keys. The
        Trainer hands its callbacks no reference to its CallbackHandler: it is the ``self`` of the
        ``call_event`` that is calling this hook. Moving an element from position i to 0 leaves
        the elements after i where they were, so that loop still calls each callback once."""
        frame = sys._getframe(1)
        while frame is not None and not isinstance(frame.f_locals.get("self"), CallbackHandler):
            frame = frame.f_back
        if frame is None:
            return
        callbacks = frame.f_locals["self"].callbacks
        if any(callback is self for callback in callbacks[1:]):
            callbacks.remove(self)
            callbacks.insert(0, self)

    @never_raises
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._move_to_front()

    @never_raises
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self._move_to_front()  # added after the Trainer's __init__ (trainer.add_callback): not moved yet
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        scaler = getattr(optimizer, "scaler", None)
        self._gradient_state = getattr(optimizer, "gradient_state", None)
        if model is not None and self.monitor.model is None:
            self.monitor.attach(model, inner if isinstance(inner, torch.optim.Optimizer) else None, scaler)
            self._hook = model.register_forward_hook(self._forward_hook)
        if state.global_step > 0:  # resumed: continue with the monitor of the checkpoint
            self._load(os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE))

    def _load(self, path: str) -> None:
        if not os.path.isfile(path):
            logger.warning("[Monitor] resumed at a checkpoint without %s: the monitor learns its baseline afresh",
                           path)
            return
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            self.monitor.load_state_dict(saved["monitor"])
            self._reporter.load_state_dict(saved["reporter"])
        except Exception as exc:  # noqa: BLE001 - a damaged file must not stop the resumed run
            logger.warning("[Monitor] %s was not restored (%s: %s); the monitor learns its baseline afresh",
                           path, type(exc).__name__, exc)

    # -- the step cycle --------------------------------------------------------------------------
    @never_raises
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._in_step, self._observed = True, False
        self._loss_sum, self._micro_batches = None, 0
        self.monitor.begin_step()

    @never_raises
    def _forward_hook(self, module: Any, inputs: Any, output: Any) -> None:
        if not self._in_step or not torch.is_grad_enabled():
            return  # an evaluation inside training
        loss = _loss_of(output)
        if loss is None:
            return
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._micro_batches += 1
        scaler = self.monitor.scaler
        last_micro_batch = self._gradient_state is None or self._gradient_state.sync_gradients
        if loss.requires_grad and last_micro_batch and not (scaler is not None and scaler.is_enabled()):
            loss.register_hook(self._on_backward)

    @never_raises
    def _on_backward(self, grad: torch.Tensor) -> None:
        # called as the backward reaches the loss: read the gradients once the whole pass is done,
        # after the callbacks queued during it (DDP's gradient all-reduce): queued from a callback
        engine = torch.autograd.Variable._execution_engine
        engine.queue_callback(lambda: engine.queue_callback(self._after_backward))

    @never_raises
    def _after_backward(self) -> None:
        self._observed = True
        self.monitor.observe_gradients()

    @never_raises
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        if self._observed:
            return
        scaler = self.monitor.scaler
        if scaler is not None and scaler.is_enabled():
            self._unscale(scaler, getattr(optimizer, "optimizer", optimizer))
        self.monitor.observe_gradients()

    @staticmethod
    def _unscale(scaler: Any, optimizer: Any) -> None:
        """Unscale the gradients unless the Trainer's clipping did: the optimizer step would do it
        next, with the same result (GradScaler.step does not unscale twice)."""
        from torch.amp.grad_scaler import OptState

        if scaler._per_optimizer_states[id(optimizer)]["stage"] is OptState.READY:
            scaler.unscale_(optimizer)

    @never_raises
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._in_step:
            return
        self._in_step = False
        loss = None if self._loss_sum is None else self._loss_sum / self._micro_batches
        self.monitor.observe_step(loss)  # on_alert="raise": raises here, out of trainer.train()

    @never_raises
    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        stats = self._reporter.new_statistics()
        if not stats or logs is None:
            return
        logs.update(stats)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(stats)  # the Trainer appended its copy of ``logs`` before on_log

    @never_raises
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = {"monitor": self.monitor.state_dict(), "reporter": self._reporter.state_dict()}
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(saved, f)

    @never_raises
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.monitor.close()
