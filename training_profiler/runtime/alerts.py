"""The monitor's alert record and its one-line text (the ``[ALERT] ...`` messages).

Torch-free: the detectors build :class:`Alert` records, the monitor logs them and hands them to
``on_alert``; nothing here decides whether something is an alert.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ADVICE", "Alert", "TrainingAlertError", "baseline_text", "fmt", "make_alert"]

ADVICE = {
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


class TrainingAlertError(RuntimeError):
    """Raised into training by a monitor created with ``on_alert="raise"``; ``.alert`` is the
    :class:`Alert` that stopped it."""

    def __init__(self, alert: Alert) -> None:
        super().__init__(f"training stopped by on_alert='raise': {alert.message}")
        self.alert = alert


def fmt(x: float) -> str:
    """A statistic as shown in a message: 3 significant digits, or nan / inf."""
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def baseline_text(center: float, spread: float) -> str:
    return "no baseline yet" if math.isnan(center) else f"baseline: {fmt(center)}±{fmt(spread)}"


def make_alert(step: int, metric: str, kind: str, value: float, baseline: float, spread: float,
               deviation: float, layer: str | None, text: str, advice_key: str | None = None) -> Alert:
    """An :class:`Alert` whose message is ``[ALERT] Step N | text | Try: advice``."""
    advice = ADVICE[advice_key or (kind if kind in ADVICE else metric)]
    if kind == "nonfinite":
        advice = ADVICE["nonfinite"]
    message = f"[ALERT] Step {step} | {text} | Try: {advice}"
    return Alert(step, metric, kind, value, baseline, spread, deviation, layer, message, advice)
