"""Real small training runs for the monitor's detection benchmark (``bench/monitor_detection.py``).

Real models on real data that ship offline, CPU, seeded:

- ``linear_regression``: an exactly learnable regression (a deep linear MLP fits y = x @ w) with
  Adam, full batch, run to convergence: the loss falls from ~17 to ~1e-13 and then wobbles at the
  float32 floor.
- ``tanh_regression``: the same data with a tanh MLP and Adam at a high LR: it converges to ~1e-4
  and Adam's late instability makes the gradient norm wander (x10) at that scale.
- ``digits_mlp``: scikit-learn's handwritten digits (1797 8x8 images), MLP, Adam, batches of 64.
- ``digits_cnn_bf16``: the digits with a small CNN under ``torch.autocast("cpu", torch.bfloat16)``,
  SGD with momentum.
- ``char_transformer``: a 2-layer causal transformer, character-level language model of 16
  fixed 32-character windows of the standard library's own source (``textwrap.py``), full batch:
  it memorizes them (loss from the 5th character on: 4.4 -> 1e-4), so every gradient shrinks together (x1/1000).
- ``char_gru``: a GRU character model of 32 KB of standard-library source (``argparse.py``,
  ``difflib.py``), random windows; not used to choose any setting (held out by task).

Faults planted at ``fault_step`` (the run goes on ``after`` steps past it):
``lr_x50`` (every learning rate x50 from then on), ``corrupt_batch`` (one batch of garbage: float
inputs replaced by noise 100x the data's scale, token ids by uniform random ones) and ``nan_input``
(one NaN in one input of one batch; for token inputs, in the embedding's output).
"""

from __future__ import annotations

import difflib
import logging
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from training_profiler import watch_training

__all__ = ["TASKS", "FAULTS", "RunResult", "run_task", "series"]

FAULTS = ("lr_x50", "corrupt_batch", "nan_input")


@dataclass
class RunResult:
    task: str
    seed: int
    steps: int
    fault: str | None
    fault_step: int | None
    alerts: list = field(default_factory=list)  # training_profiler Alert records
    history: list = field(default_factory=list)  # the monitor's per-step records
    final_loss: float = math.nan

    def first_alert_after_fault(self):
        return next((a for a in self.alerts if a.step >= self.fault_step), None)


@dataclass
class _Setup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # step -> (inputs, target)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    tokens: int = 0  # > 0: integer inputs (vocabulary size), else float inputs
    autocast: torch.dtype | None = None


# -- data --------------------------------------------------------------------------------------------
def _regression_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(256, 8, generator=g)
    return x, 1.3 * x @ torch.randn(8, 1, generator=g)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    return (x - x.mean(0)) / (x.std(0) + 0.1), torch.tensor(d.target)


def _stdlib_text(*modules: Any, limit: int) -> tuple[torch.Tensor, int]:
    text = "".join(Path(m.__file__).read_text(encoding="utf-8") for m in modules)[:limit]
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text]), len(vocab)


def _minibatches(n: int, size: int, seed: int) -> Callable[[int], torch.Tensor]:
    g = torch.Generator().manual_seed(2000 + seed)
    return lambda step: torch.randint(0, n, (size,), generator=g)


def _windows(ids: torch.Tensor, length: int, size: int, seed: int) -> Callable[[int], tuple]:
    pick = _minibatches(len(ids) - length - 1, size, seed)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = pick(step)[:, None] + torch.arange(length + 1)
        chunk = ids[starts]
        return chunk[:, :-1], chunk[:, 1:]

    return batch


# -- models --------------------------------------------------------------------------------------------
class _CharTransformer(nn.Module):
    def __init__(self, vocab: int, dim: int = 64, length: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.position[: ids.shape[1]]
        return self.head(self.norm(self.blocks(h, mask=self.mask, is_causal=True)))


class _CharGRU(nn.Module):
    def __init__(self, vocab: int, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, 64, batch_first=True)
        self.head = nn.Linear(64, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(ids))[0])


def _token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))


# -- tasks ---------------------------------------------------------------------------------------------
def _linear_regression(seed: int) -> _Setup:
    x, y = _regression_data(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 1))
    return _Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), lambda step: (x, y), F.mse_loss)


def _tanh_regression(seed: int) -> _Setup:
    x, y = _regression_data(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    return _Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), lambda step: (x, y), F.mse_loss)


def _digits_mlp(seed: int) -> _Setup:
    x, y = _digits()
    pick = _minibatches(len(x), 64, seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = pick(step)
        return x[idx], y[idx]

    return _Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), batch, F.cross_entropy)


def _digits_cnn_bf16(seed: int) -> _Setup:
    x, y = _digits()
    x = x.reshape(-1, 1, 8, 8)
    pick = _minibatches(len(x), 64, seed)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = pick(step)
        return x[idx], y[idx]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return _Setup(model, optimizer, batch, lambda out, t: F.cross_entropy(out.float(), t), autocast=torch.bfloat16)


def _char_transformer(seed: int) -> _Setup:
    ids, vocab = _stdlib_text(textwrap, limit=1024)
    chunk = ids[torch.arange(0, 1024 - 33, 64)[:, None] + torch.arange(33)]  # 16 fixed windows: full batch
    x, y = chunk[:, :-1], chunk[:, 1:]
    model = _CharTransformer(vocab, dim=32, length=32)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _token_loss(logits[:, 4:], target[:, 4:])  # from 4 characters of context on, all is learnable

    return _Setup(model, torch.optim.AdamW(model.parameters(), lr=2e-3), lambda step: (x, y), loss,
                  tokens=vocab)


def _char_gru(seed: int) -> _Setup:
    import argparse

    ids, vocab = _stdlib_text(argparse, difflib, limit=32768)
    model = _CharGRU(vocab)
    return _Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), _windows(ids, 32, 8, seed), _token_loss,
                  tokens=vocab)


# task -> (build, sane steps, fault step)
TASKS: dict[str, tuple[Callable[[int], _Setup], int, int]] = {
    "linear_regression": (_linear_regression, 3000, 1500),
    "tanh_regression": (_tanh_regression, 3000, 1500),
    "digits_mlp": (_digits_mlp, 3000, 800),
    "digits_cnn_bf16": (_digits_cnn_bf16, 2000, 800),
    "char_transformer": (_char_transformer, 1200, 700),
    "char_gru": (_char_gru, 1200, 700),
}


def _corrupt(inputs: torch.Tensor, tokens: int, g: torch.Generator) -> torch.Tensor:
    if tokens:
        return torch.randint(0, tokens, inputs.shape, generator=g)
    return torch.randn(inputs.shape, generator=g) * 100.0 * inputs.std()


def _nan_hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    output = output.clone()
    output.view(-1)[0] = math.nan
    return output


def run_task(task: str, seed: int, fault: str | None = None, steps: int | None = None, after: int = 100,
             **monitor_options: Any) -> RunResult:
    """Train ``task`` with the monitor attached; sane (``fault=None``) for ``steps`` steps (the
    task's default), or with ``fault`` planted at the task's fault step and ``after`` steps past it."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}: use one of {', '.join(FAULTS)}")
    build, default_steps, fault_step = TASKS[task]
    torch.manual_seed(seed)
    setup = build(seed)
    if fault is None:
        steps, fault_step = steps or default_steps, None
    else:
        steps = fault_step + after
    g = torch.Generator().manual_seed(3000 + seed)
    model, optimizer = setup.model, setup.optimizer
    was_disabled = logging.getLogger("training_profiler").disabled
    logging.getLogger("training_profiler").disabled = True
    last = math.nan
    try:
        with watch_training(model=model, optimizer=optimizer, **monitor_options) as monitor:
            for step in range(1, steps + 1):
                inputs, target = setup.batch(step)
                hook = None
                if step == fault_step:
                    if fault == "lr_x50":
                        for group in optimizer.param_groups:
                            group["lr"] *= 50
                    elif fault == "corrupt_batch":
                        inputs = _corrupt(inputs, setup.tokens, g)
                    elif fault == "nan_input" and setup.tokens:
                        hook = model.embed.register_forward_hook(_nan_hook)
                    elif fault == "nan_input":
                        inputs = inputs.clone()
                        inputs.view(-1)[0] = math.nan
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=setup.autocast or torch.bfloat16, enabled=setup.autocast is not None):
                    loss = setup.loss(model(inputs), target)
                loss.backward()
                optimizer.step()
                monitor.step(loss)
                last = loss.detach()
                if hook is not None:
                    hook.remove()
        return RunResult(task, seed, steps, fault, fault_step, monitor.alerts, monitor.history, float(last))
    finally:
        logging.getLogger("training_profiler").disabled = was_disabled


def series(result: RunResult) -> dict[str, list[float]]:
    """The loss and global gradient-norm series of a run (NaN where a step recorded none)."""
    return {m: [r.get(m, math.nan) for r in result.history] for m in ("loss", "grad_norm")}
