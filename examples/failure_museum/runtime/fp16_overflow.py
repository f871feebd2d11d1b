"""Failure museum: fp16 activation overflow.

A regression on raw, unnormalized sensor counts (values up to 2e5) trained under fp16 autocast:
the first linear layer's outputs reach tens of thousands, beyond half of fp16's maximum (65504),
and some become Inf. The monitor's overflow alert names the layer. Normalizing the inputs or
using bf16 fixes it.

    python examples/failure_museum/runtime/fp16_overflow.py
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from training_profiler import watch_training


def run(steps: int = 20, dtype: torch.dtype = torch.float16, seed: int = 0, **monitor_options):
    """Train under CPU autocast in ``dtype`` for ``steps`` steps; return the closed monitor."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-12)
    monitor_options.setdefault("warmup_steps", 10)
    monitor_options.setdefault("alert_window", 10)
    monitor_options.setdefault("precision_every", 5)

    @watch_training(**monitor_options)
    def train_step(model, optimizer, inputs, target):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype):
            prediction = model(inputs)
        loss = F.mse_loss(prediction.float(), target)
        loss.backward()
        optimizer.step()
        return loss

    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        counts = torch.rand(32, 64, generator=g) * 2e5  # raw counts: never normalized
        train_step(model, optimizer, counts, counts.mean(dim=1, keepdim=True))
    train_step.monitor.close()
    return train_step.monitor


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run()
