"""Failure museum: a 100-layer plain MLP (no residuals, no normalization, tanh, default init).

Each layer shrinks the backward signal (default init has weight variance 1/(3 fan_in)), so the
gradient reaching the first layers is tens of orders of magnitude below the last one: the early
layers never learn. The monitor's vanishing-gradient alert names them.

    python examples/failure_museum/runtime/deep_plain_mlp.py
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from training_profiler import watch_training


def make_model(depth: int = 100, width: int = 32) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def run(steps: int = 30, depth: int = 100, seed: int = 0, **monitor_options):
    """Train the deep plain MLP for ``steps`` steps; return the closed monitor."""
    torch.manual_seed(seed)
    model = make_model(depth)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor_options.setdefault("warmup_steps", 10)
    monitor_options.setdefault("alert_window", 10)

    @watch_training(**monitor_options)
    def train_step(model, optimizer, inputs, target):
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(inputs), target)
        loss.backward()
        optimizer.step()
        return loss

    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 32, generator=g)
        train_step(model, optimizer, x, x.sum(dim=1, keepdim=True))
    train_step.monitor.close()
    return train_step.monitor


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run()
