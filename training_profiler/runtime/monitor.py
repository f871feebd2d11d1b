"""`watch_training`: a zero-configuration training monitor that alerts early, rarely falsely and
cheaply.

Per step, on the device and without a host sync: the loss, per-layer gradient norms (one fused
``torch._foreach_norm``) and their global norm, the GradScaler's scale; on a cadence also the
update-to-weight ratio per layer and the fp16/bf16 overflow / underflow fractions of every leaf
module's output (strided sample). Each step's values are one row of a small device buffer; the
loss and the global norm of each row are copied to pinned host memory at once (non-blocking) so a
NaN/Inf is reported with the exact step it happened, and the whole buffer every
``transfer_every`` steps, when the host runs the robust detectors of :mod:`.baseline`.
Nothing here ever raises into the training loop: an internal error is logged once and that metric
is switched off.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.optim.optimizer as _optim_hooks
from torch import nn

from .baseline import AdaptiveDetector

__all__ = ["Alert", "TrainingMonitor", "watch_training"]

logger = logging.getLogger("training_profiler")

_FIXED = ("loss", "grad_norm", "loss_scale")  # first columns of a row; then per-layer columns
_LOW_PRECISION = {torch.float16: 65504.0, torch.bfloat16: 3.3895e38}
_SMALLEST_NORMAL = {torch.float16: 6.1035e-05, torch.bfloat16: 1.1755e-38}
_SAMPLE = 65536  # activation elements inspected per module on a precision step
_ADVICE = {
    "grad_norm": "lower the learning rate, add warm-up or clip gradients (clip_grad_norm_)",
    "loss": "lower the learning rate; check the data of this step (outliers, label errors)",
    "nonfinite": "check inputs and masks for NaN/Inf, lower the learning rate; under fp16 use loss "
                 "scaling (GradScaler) or bf16",
    "vanishing": "add residual connections or normalization, use Kaiming init or a non-saturating "
                 "activation (ReLU/GELU instead of sigmoid/tanh)",
    "overflow": "use bf16 instead of fp16, or keep this layer in fp32 / normalize its input",
    "underflow": "use loss scaling (GradScaler) or bf16 instead of fp16",
    "gradient_overflow": "use bf16, or mixed precision (fp32 weights, torch.autocast and a GradScaler) "
                         "instead of a pure fp16 model",
    "skipped_steps": "the GradScaler keeps skipping steps: look for Inf in the forward pass, lower "
                     "the learning rate, or use bf16",
}


@dataclass(frozen=True)
class Alert:
    """One alert: what left its baseline, when, by how much, and what to try."""

    step: int
    metric: str  # loss | grad_norm | layer_grad_norm | activation_overflow | activation_underflow | loss_scale
    kind: str  # nonfinite | spike | rising | divergence | vanishing | overflow | underflow | skipped_steps
    value: float
    baseline: float
    spread: float
    deviation: float  # robust sigmas (log space); inf for NaN/Inf
    layer: str | None
    message: str  # the ``[ALERT] ...`` line as logged
    advice: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _low_precision_fractions(t: torch.Tensor) -> torch.Tensor:
    """[overflow, underflow] of an fp16/bf16 tensor, on the device: the fraction of values at or
    beyond half the format's maximum (or Inf), and of non-zero values below its smallest normal."""
    flat = t.detach().reshape(-1)
    if flat.numel() > _SAMPLE:  # strided sample: cheap, and spread over the whole tensor
        flat = flat[:: flat.numel() // _SAMPLE]
    a = flat.abs().float()
    near_max = (a >= 0.5 * _LOW_PRECISION[t.dtype]) | ~torch.isfinite(a)
    nonzero = a > 0
    subnormal = nonzero & (a < _SMALLEST_NORMAL[t.dtype])
    return torch.stack([near_max.float().mean(), subnormal.float().sum() / nonzero.sum().clamp_(min=1).float()])


def _baseline_text(center: float, spread: float) -> str:
    return "no baseline yet" if math.isnan(center) else f"baseline: {_fmt(center)}±{_fmt(spread)}"


def _layer_name(param_name: str) -> str:
    parts = [p for p in param_name.split(".")[:-1] if p not in ("module", "_orig_mod")]
    return ".".join(parts) or "<root>"


class _Transfer:
    """A device buffer's host mirror: pinned memory + a CUDA event per copy on GPU, the buffer
    itself elsewhere (a CPU "copy" is already done). Host reads go through a numpy view, so they
    never dispatch a torch op."""

    def __init__(self, device_buf: torch.Tensor) -> None:
        self.cuda = device_buf.is_cuda
        if self.cuda:
            self.host = torch.empty(device_buf.shape, dtype=device_buf.dtype, pin_memory=True)
        else:
            self.host = device_buf
        self.view = self.host.numpy()
        self.events: dict[int, Any] = {}

    def copy(self, key: int, src: torch.Tensor, dst_index) -> None:
        if not self.cuda:
            return
        self.host[dst_index].copy_(src, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[key] = event

    def ready(self, key: int) -> bool:
        event = self.events.get(key)
        return event is None or event.query()

    def wait(self, key: int) -> None:
        event = self.events.pop(key, None)
        if event is not None:
            event.synchronize()


class TrainingMonitor:
    """The monitor behind :func:`watch_training`; use it as a decorator or a context manager.

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
        self._detectors = {m: AdaptiveDetector(warmup_steps=warmup_steps, alert_window=alert_window)
                           for m in ("loss", "grad_norm")}
        self._disabled: set[str] = set()
        self._hooks: list[Any] = []
        self._cadence_hooks: list[Any] = []
        self._closed = False
        self._in_step = False
        self._nan_last: dict[str, int] = {}  # metric -> last NaN/Inf step (one alert per episode)
        self._episodes: dict[str, int] = {}  # alert key -> step of the last alert (one per episode)
        self._skips: deque[int] = deque()
        self._last_scale = math.nan
        self._layer_hist: deque[np.ndarray] = deque(maxlen=256)
        self._under_hist: deque[np.ndarray] = deque(maxlen=64)
        self._last_grad_alert = -(10**9)
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
        return list(self._layers) if self.model is not None else []

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

    def step(self, loss: Any = None) -> None:
        """Context-manager mode: mark the end of one training step (pass its loss)."""
        if not self._in_step:
            self._begin_step()
        self._end_step(loss)
        self._begin_step()

    def flush(self) -> None:
        """Process every step recorded so far (waits for the device: one sync)."""
        if self.model is None or self._closed:
            return
        self._drain_fast(wait=True)
        if self._row and self._world == 1:  # distributed: partial batches stay until the next full one
            self._transfer_batch()
        if self._batch is not None:
            self._transfer.wait(0)
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
            scalars = ("step", *_FIXED, "grad_overflow", "grad_underflow")
            columns = list(scalars)
            for key in ("layer_grad_norms", "update_ratio"):
                columns += [f"{key}/{name}" for name in self._layers]
            for key in ("activation_overflow", "activation_underflow"):
                columns += [f"{key}/{name}" for name in self._act_layers]
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, columns, restval="")
                writer.writeheader()
                for row in rows:
                    flat = {k: row[k] for k in scalars if k in row}
                    for key, names in (("layer_grad_norms", self._layers), ("update_ratio", self._layers),
                                       ("activation_overflow", self._act_layers),
                                       ("activation_underflow", self._act_layers)):
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
                        extent=(rows[0]["step"], rows[-1]["step"], 0, len(self._layers)))
        ax2.set(xlabel="step", ylabel="layer", title="log10 gradient norm per layer over time")
        fig.colorbar(im, ax=ax2)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        return path

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
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"watch_training: {type(model).__name__} has no trainable parameters to watch")
        self._params = [p for _, p in named]
        self._param_ids = {id(p) for p in self._params}
        self._layers: list[str] = []
        index: list[int] = []
        for name, _ in named:
            layer = _layer_name(name)
            if not self._layers or self._layers[-1] != layer:
                if layer in self._layers:
                    index.append(self._layers.index(layer))
                    continue
                self._layers.append(layer)
            index.append(len(self._layers) - 1)
        # a torch.compile'd model recompiles whenever forward hooks come and go: no activation stats there
        compiled = hasattr(model, "_orig_mod")
        self._act_modules = [] if compiled else [
            (n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
        self._act_layers = [".".join(p for p in n.split(".") if p not in ("module", "_orig_mod")) or "<root>"
                            for n, _ in self._act_modules]
        device = self._params[0].device
        self._device = device
        self._param_layer = torch.tensor(index, device=device)
        self._param_layer_list = index
        n_layers, n_act = len(self._layers), len(self._act_layers)
        self._c_layer = len(_FIXED)
        self._c_update = self._c_layer + n_layers
        self._c_over = self._c_update + n_layers
        self._c_under = self._c_over + n_act
        self._c_grad_precision = self._c_under + n_act  # overflow, underflow of fp16/bf16 gradients
        width = self._c_grad_precision + 2
        self._buf = torch.full((self.transfer_every, width), math.nan, dtype=torch.float32, device=device)
        self._transfer = _Transfer(self._buf)
        self._fast = _Transfer(torch.empty((self.transfer_every, 2), device=device))
        self._row = 0
        self._row_meta: list[tuple[int, bool, bool, bool]] = []  # (step, has_loss, has_grad, precision)
        self._batch: list[tuple[int, bool, bool, bool]] | None = None  # row meta of the copy in flight
        self._pending_fast: deque[tuple[int, int, bool, bool]] = deque()  # (row, step, has_loss, has_grad)
        self._layer_base: np.ndarray | None = None
        self._grads_done = False
        self._snapshot: list[torch.Tensor] | None = None
        self._act_stats: dict[int, torch.Tensor] = {}
        self._idx_cache: tuple[tuple[int, ...], Any] | None = None
        self._act_idx: tuple[tuple[int, ...], torch.Tensor] | None = None
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
        self._buf[self._row].fill_(math.nan)
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
        row = self._buf[self._row]
        has_loss = self._guarded("loss", self._write_loss, row, out) or False
        if not self._grads_done:
            self._guarded("grad_norm", self._write_grads, row)
        if self.scaler is not None and getattr(self.scaler, "_scale", None) is not None:
            self._guarded("loss_scale", row[2].copy_, self.scaler._scale.reshape(()))
        precision = self._precision_step(step)
        if precision and self._act_stats:
            self._guarded("activation_precision", self._write_act_stats, row)
        self._drain_fast(wait=False)  # before the copy below reuses the host slot of step - transfer_every
        self._fast.copy(self._row, row[:2], self._row)
        self._pending_fast.append((self._row, step, has_loss, self._grads_done))
        self._row_meta.append((step, has_loss, self._grads_done, precision))
        self._row += 1
        if not self._fast.cuda:
            self._drain_fast(wait=False)  # a CPU "copy" has landed already: report this step now
        if self._row == self.transfer_every:
            self._guarded("transfer", self._transfer_batch)
        elif self._batch is not None and self._transfer.ready(0):
            self._guarded("transfer", self._process_batch)

    def _write_loss(self, row: torch.Tensor, out: Any) -> bool:
        loss = out
        if isinstance(out, dict):
            loss = out.get("loss")
        elif isinstance(out, (tuple, list)):
            loss = next((v for v in out if isinstance(v, (torch.Tensor, float))), None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            row[0].copy_(loss.detach().reshape(()))
            return True
        if isinstance(loss, (float, int)) and not isinstance(loss, bool):
            row[0].fill_(float(loss))
            return True
        return False

    def _layer_index(self, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layer of each parameter that has a gradient, and a mask of the layers without any."""
        key = tuple(id(p) for p in params)
        if self._idx_cache is None or self._idx_cache[0] != key:
            position = {id(p): i for i, p in enumerate(self._params)}  # by identity: tensors' == is elementwise
            pos = [position[id(p)] for p in params] if len(params) < len(self._params) else None
            idx = self._param_layer if pos is None else self._param_layer[torch.tensor(pos, device=self._device)]
            missing = None
            if pos is not None:
                covered = {int(self._param_layer_list[i]) for i in pos}
                if len(covered) < len(self._layers):
                    missing = torch.tensor([i not in covered for i in range(len(self._layers))], device=self._device)
            self._idx_cache = (key, (idx, missing))
        return self._idx_cache[1]

    def _write_grads(self, row: torch.Tensor) -> None:
        params = [p for p in self._params if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        if all(g.dtype == torch.float32 for g in grads):
            norms = torch._foreach_norm(grads)
        else:  # fp16 norms overflow at 65504: accumulate in fp32
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        sq = torch.stack(norms).square_()
        layers = row[self._c_layer : self._c_update]
        idx, missing = self._layer_index(params)
        layers.zero_().index_add_(0, idx, sq)
        row[1].copy_(layers.sum().sqrt_())
        layers.sqrt_()
        if self._precision_step(self.step_count + 1):
            low = [g for g in grads if g.dtype in _LOW_PRECISION]
            if low:  # pure fp16/bf16 training: the mean fractions over the gradient tensors
                c = self._c_grad_precision
                row[c : c + 2].copy_(torch.stack([_low_precision_fractions(g) for g in low]).mean(0))
        if missing is not None:  # a layer without gradients is "not measured", not "vanished"
            layers.masked_fill_(missing, math.nan)
        self._grads_done = True

    def _write_act_stats(self, row: torch.Tensor) -> None:
        key = tuple(self._act_stats)
        if self._act_idx is None or self._act_idx[0] != key:  # a host->device copy: only when it changes
            self._act_idx = (key, torch.tensor(key, device=self._device))
        idx = self._act_idx[1]
        stats = torch.stack(list(self._act_stats.values()))
        row[self._c_over : self._c_under].index_copy_(0, idx, stats[:, 0])
        row[self._c_under : self._c_grad_precision].index_copy_(0, idx, stats[:, 1])

    # optimizer hooks are global (they see every optimizer): act only for ours
    def _is_ours(self, optimizer: torch.optim.Optimizer) -> bool:
        if self.optimizer is not None:
            return optimizer is self.optimizer
        if any(id(p) in self._param_ids for g in optimizer.param_groups for p in g["params"]):
            self.optimizer = optimizer  # discovered: the step function used a global optimizer
            return True
        return False

    def _optimizer_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._in_step or not self._is_ours(optimizer):
            return
        self._guarded("grad_norm", self._write_grads, self._buf[self._row])
        if self._precision_step(self.step_count + 1):
            self._guarded("update_ratio", self._take_snapshot)

    def _take_snapshot(self) -> None:
        self._snapshot = [p.detach().clone() for p in self._params]

    def _optimizer_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None or not self._in_step or optimizer is not self.optimizer:
            return
        self._guarded("update_ratio", self._write_update_ratio)
        self._snapshot = None

    def _write_update_ratio(self) -> None:
        params = [p.detach() for p in self._params]
        delta = torch._foreach_norm(torch._foreach_sub(params, self._snapshot), 2, dtype=torch.float32)
        weight = torch._foreach_norm(params, 2, dtype=torch.float32)
        idx = self._param_layer
        n = len(self._layers)
        d = torch.zeros(n, device=self._device).index_add_(0, idx, torch.stack(delta).square_())
        w = torch.zeros(n, device=self._device).index_add_(0, idx, torch.stack(weight).square_())
        self._buf[self._row, self._c_update : self._c_over].copy_((d / w).sqrt_())

    def _add_cadence_hooks(self) -> None:
        for i, (_, module) in enumerate(self._act_modules):
            self._cadence_hooks.append(module.register_forward_hook(functools.partial(self._act_hook, i)))

    def _remove_cadence_hooks(self) -> None:
        for handle in self._cadence_hooks:
            handle.remove()
        self._cadence_hooks.clear()

    def _act_hook(self, index: int, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dtype in _LOW_PRECISION:
            self._guarded("activation_precision", self._act_stat, index, output.detach())

    def _act_stat(self, index: int, out: torch.Tensor) -> None:
        self._act_stats[index] = _low_precision_fractions(out)

    # -- host side -------------------------------------------------------------------------------------
    def _transfer_batch(self) -> None:
        """Ship the filled buffer to the host (non-blocking); it is judged once it has landed."""
        if self._batch is not None:  # the previous copy: long done unless the GPU is far behind
            self._transfer.wait(0)
            self._process_batch()
        if self._world > 1:  # reduced statistics: the mean over ranks (DDP grads are already equal)
            torch.distributed.all_reduce(self._buf)
            self._buf.div_(self._world)
        n = self._row
        self._transfer.copy(0, self._buf[:n], slice(0, n))
        self._batch, self._row_meta = self._row_meta[:n], self._row_meta[n:]
        self._row = 0
        if self._transfer.ready(0):
            self._process_batch()

    def _drain_fast(self, wait: bool) -> None:
        """Report NaN/Inf in loss or global gradient norm of each step whose copy has landed."""
        while self._pending_fast:
            row, step, has_loss, has_grad = self._pending_fast[0]
            if not self._fast.ready(row):
                if not wait and len(self._pending_fast) < self.transfer_every:
                    return
                self._fast.wait(row)
            self._pending_fast.popleft()
            values = self._fast.view[row] if self._fast.cuda else self._transfer.view[row, :2]
            self._check_finite(step, "loss", float(values[0]), has_loss)
            self._check_finite(step, "grad_norm", float(values[1]), has_grad)

    def _check_finite(self, step: int, metric: str, value: float, present: bool) -> None:
        if not present or math.isfinite(value):
            return
        last = self._nan_last.get(metric)
        self._nan_last[metric] = step
        if last is not None and step - last < self.alert_window:
            return
        if metric == "grad_norm" and self.scaler is not None and self.scaler.is_enabled():
            return  # with a GradScaler an Inf gradient is a skipped step, judged by skipped_steps
        detector = self._detectors.get(metric)
        ready = detector is not None and detector.ready
        center, spread = detector.baseline_natural() if ready else (math.nan, math.nan)
        self._alert(step, metric, "nonfinite", value, center, spread, math.inf, None,
                    f"{metric}: {value} ({_baseline_text(center, spread)}) | non-finite")

    def _process_batch(self) -> None:
        meta, self._batch = self._batch or [], None
        block = self._transfer.view[: len(meta)].copy()
        nl = len(self._layers)
        for (step, has_loss, has_grad, precision), values in zip(meta, block):
            rec: dict[str, Any] = {"step": step}
            loss, gnorm, scale = (float(v) for v in values[:3])
            if has_loss:
                rec["loss"] = loss
            if has_grad:
                rec["grad_norm"] = gnorm
                layer_norms = values[self._c_layer : self._c_layer + nl]
                rec["layer_grad_norms"] = layer_norms.tolist()
            if not math.isnan(scale):
                rec["loss_scale"] = scale
            update = values[self._c_update : self._c_over]
            if not np.isnan(update).all():
                rec["update_ratio"] = update.tolist()
            over = values[self._c_over : self._c_under]
            under = values[self._c_under : self._c_grad_precision]
            grad_over, grad_under = (float(v) for v in values[self._c_grad_precision :])
            if not math.isnan(grad_over):
                rec["grad_overflow"], rec["grad_underflow"] = grad_over, grad_under
            if not np.isnan(over).all():
                rec["activation_overflow"] = over.tolist()
                rec["activation_underflow"] = under.tolist()
            self._history.append(rec)
            self._guarded("detectors", self._judge, rec)
            if step % self.log_every == 0 and self._rank == 0:
                self._log_status(rec)

    def _judge(self, rec: dict[str, Any]) -> None:
        step = rec["step"]
        if "loss" in self._detectors and rec.get("loss", 1.0) <= 0.0:
            # the detectors work in log space; a loss that can be <= 0 keeps only its NaN/Inf check
            del self._detectors["loss"]
            logger.info("[Monitor] Step %d | loss %s <= 0: loss spikes are not judged for this run, "
                        "NaN/Inf still are", step, _fmt(rec["loss"]))
        for metric in ("loss", "grad_norm"):
            if metric not in rec or metric not in self._detectors:
                continue
            verdict = self._detectors[metric].update(step, rec[metric])
            if verdict is None or verdict.kind == "nonfinite":  # NaN/Inf: reported by _drain_fast
                continue
            if not verdict.is_alert:
                logger.info("[Monitor] Step %d | %s baseline moved to %s (a learning-rate schedule step?); "
                            "not an alert", step, metric, _fmt(verdict.baseline))
                continue
            layer = None
            text = (f"{metric}: {_fmt(verdict.value)} ({_baseline_text(verdict.baseline, verdict.spread)})"
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
            norms = np.asarray(rec["layer_grad_norms"])
            if not np.isinf(norms).any() and math.isfinite(rec["grad_norm"]):
                self._check_vanishing(step, norms)
                self._layer_hist.append(norms)
        if "loss_scale" in rec:
            self._check_scaler(step, rec["loss_scale"])
        if "activation_overflow" in rec:
            self._check_precision(step, np.asarray(rec["activation_overflow"]),
                                  np.asarray(rec["activation_underflow"]))
        if "grad_overflow" in rec:
            self._check_grad_precision(step, rec["grad_overflow"], rec["grad_underflow"])

    def _layer_baseline(self, step: int) -> np.ndarray:
        """Per-layer median gradient norm over the recent history (recomputed every alert_window steps)."""
        if self._layer_base is None or step % self.alert_window == 0:
            self._layer_base = np.median(np.stack(self._layer_hist), axis=0)
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
        return self._layers[first], float(ratio[first])

    def _check_vanishing(self, step: int, norms: np.ndarray) -> None:
        if step - self._last_grad_alert < self.alert_window:
            return  # saturated layers during an explosion are a symptom, not a second problem
        vanishing = norms < self.vanishing_floor  # NaN (layer without gradients) compares False
        if len(self._layer_hist) >= self.warmup_steps:
            vanishing |= norms < 1e-3 * self._layer_baseline(step)
        bad = np.nonzero(vanishing)[0]
        if len(bad) == 0:
            self._episode_quiet("vanishing", step)
            return
        first = int(bad[0])
        names = [self._layers[i] for i in bad]
        listed = ", ".join(f"'{n}'" for n in names[:3]) + (f" ... '{names[-1]}'" if len(names) > 3 else "")
        self._alert(step, "layer_grad_norm", "vanishing", float(norms[first]), self.vanishing_floor, 0.0,
                    -math.inf, names[0],
                    f"Layer '{names[0]}' grad_norm: {_fmt(float(norms[first]))} (floor: {self.vanishing_floor:g}, "
                    f"largest layer: {_fmt(float(np.nanmax(norms)))}) | vanishing gradients in {len(bad)} of "
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
                        f"loss_scale: {_fmt(scale)} | {len(self._skips)} skipped optimizer steps in the last 100",
                        episode="skipped_steps")
        else:
            self._episode_quiet("skipped_steps", step)

    def _check_precision(self, step: int, over: np.ndarray, under: np.ndarray) -> None:
        bad = np.nonzero(np.nan_to_num(over) > 0)[0]
        if len(bad):
            i = int(bad[0])
            self._alert(step, "activation_overflow", "overflow", float(over[i]), 0.0, 0.0, math.inf,
                        self._act_layers[i],
                        f"Layer '{self._act_layers[i]}' overflow_ratio: {_fmt(float(over[i]))} (values at or beyond "
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
                            float(spread[i]), math.nan, self._act_layers[i],
                            f"Layer '{self._act_layers[i]}' underflow_ratio: {_fmt(float(under[i]))} (baseline: "
                            f"{_fmt(float(base[i]))}±{_fmt(float(spread[i]))})", advice_key="underflow",
                            episode="underflow")
            else:
                self._episode_quiet("underflow", step, quiet=1)
        self._under_hist.append(under)

    def _check_grad_precision(self, step: int, over: float, under: float) -> None:
        """fp16/bf16 gradients (pure low-precision training): Inf / near-max values, or more than 1%
        of the non-zero values below the smallest normal (lost to underflow next)."""
        if over > 0:
            self._alert(step, "gradient_overflow", "overflow", over, 0.0, 0.0, math.inf, None,
                        f"gradient overflow_ratio: {_fmt(over)} (values at or beyond half the fp16/bf16 maximum "
                        f"or Inf; baseline: 0)", advice_key="gradient_overflow", episode="grad_overflow")
        else:
            self._episode_quiet("grad_overflow", step, quiet=1)
        if under > 0.01:
            self._alert(step, "gradient_underflow", "underflow", under, 0.0, 0.0, math.nan, None,
                        f"gradient underflow_ratio: {_fmt(under)} (limit: 0.01) | the gradients are fp16/bf16 "
                        f"subnormals", advice_key="underflow", episode="grad_underflow")
        else:
            self._episode_quiet("grad_underflow", step, quiet=1)

    # -- alerts --------------------------------------------------------------------------------
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
        advice = _ADVICE[advice_key or (kind if kind in _ADVICE else metric)]
        if kind == "nonfinite":
            advice = _ADVICE["nonfinite"]
        message = f"[ALERT] Step {step} | {text} | Try: {advice}"
        alert = Alert(step, metric, kind, value, baseline, spread, deviation, layer, message, advice)
        self._alerts.append(alert)
        if self._rank == 0 or self.all_ranks:
            logger.warning(message)
            if self.on_alert is not None:
                self.on_alert(alert)

    def _log_status(self, rec: dict[str, Any]) -> None:
        metric = "grad_norm" if "grad_norm" in rec else "loss"
        if metric not in rec or metric not in self._detectors:
            return
        center, spread = self._detectors[metric].baseline_natural()
        if not self._detectors[metric].ready:
            status = f"warm-up ({self.warmup_steps} steps)"
        elif self._alerts and rec["step"] - self._alerts[-1].step < self.alert_window:
            status = f"ALERT ({self._alerts[-1].kind})"
        else:
            status = "OK"
        logger.info("[Monitor] Step %d | %s: %s (%s) | Status: %s", rec["step"], metric,
                    _fmt(rec[metric]), _baseline_text(center, spread), status)


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
