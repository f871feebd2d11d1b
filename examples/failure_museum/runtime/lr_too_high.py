"""Failure museum: learning rate too high.

A small MLP regression (tanh, plain SGD) trains fine at lr=0.05; from step 300 the learning rate
is ramped towards 2.0, past the stability limit, and the run diverges over tens of steps until the
loss is NaN (step 355). The monitor alerts on the growing gradient norm well before the NaN (step
336). ``run(steps=2000)`` is the same run at the sane learning rate (no alerts);
``run(lr=10.0)`` is NaN within the warm-up (the NaN/Inf alert needs no baseline).

    python examples/failure_museum/runtime/lr_too_high.py
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from training_profiler import watch_training


def make_data(seed: int = 0, n: int = 2048, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g) / dim**0.5
    y = torch.sin(3 * x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def run(steps: int = 600, lr: float = 0.05, high_lr: float | None = None, raise_at: int = 300, ramp: int = 100,
        seed: int = 0, **monitor_options):
    """Train for ``steps`` steps (batch 64, SGD); from ``raise_at`` the learning rate ramps linearly to
    ``high_lr`` over ``ramp`` steps. Return the closed monitor."""
    torch.manual_seed(seed)
    x, y = make_data(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    monitor_options.setdefault("warmup_steps", 100)
    monitor_options.setdefault("alert_window", 50)

    @watch_training(**monitor_options)
    def train_step(model, batch):
        inputs, target = batch
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(inputs), target)
        loss.backward()
        optimizer.step()
        return loss

    g = torch.Generator().manual_seed(seed + 1)
    for step in range(1, steps + 1):
        if high_lr is not None and step >= raise_at:
            for group in optimizer.param_groups:
                group["lr"] = lr + (high_lr - lr) * min(1.0, (step - raise_at) / ramp)
        idx = torch.randint(0, len(x), (64,), generator=g)
        train_step(model, (x[idx], y[idx]))
    train_step.monitor.close()
    return train_step.monitor


def first_nonfinite_step(monitor) -> int | None:
    """The first step whose loss was NaN/Inf, from the monitor's history."""
    return next((r["step"] for r in monitor.history if not (abs(r.get("loss", 0.0)) < float("inf"))), None)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    monitor = run(steps=400, high_lr=2.0)
    print(f"loss first NaN/Inf at step {first_nonfinite_step(monitor)}; {len(monitor.alerts)} alert(s)")
