"""Planted faults shared by the framework callback tests (test_runtime_lightning.py,
test_runtime_transformers.py): one tiny regression, the same batches and the same optimizer
schedule in a hand-written loop (the decorator), a Lightning Trainer and a Hugging Face Trainer,
so that the same fault must give the same alert step through all three.

Steps are numbered from 1, as in the alerts: step ``i`` trains on batch ``i - 1``.
"""

import torch
from torch import nn

from training_profiler import watch_training

STEPS = 80
BATCH = 32
LR = 0.01
LR_RAISE_AFTER = 60  # the update of step 61 onwards uses LR x LR_FACTOR: the gradients explode at step 62
LR_FACTOR = 100.0
NAN_STEP = 30  # the batch of this step is NaN
OVERFLOW_STEPS = (41, 42, 43)  # these batches are x1000: fp16 overflows in the backward, the GradScaler skips
OPTIONS = {"warmup_steps": 20, "alert_window": 10}


def make_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def make_data(nan_step=None, overflow=False):
    """(x, y) for STEPS steps of BATCH rows; the rows of ``nan_step``'s batch are NaN, those of
    the OVERFLOW_STEPS x1000 when ``overflow``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(STEPS * BATCH, 1, generator=g)
    if nan_step is not None:
        x[(nan_step - 1) * BATCH : nan_step * BATCH] = float("nan")
    for step in OVERFLOW_STEPS if overflow else ():
        x[(step - 1) * BATCH : step * BATCH] *= 1000.0
    return x, y


def make_optimizer(params, lr_raise=False):
    """SGD, and a per-step schedule that raises the LR after LR_RAISE_AFTER steps (or a constant one)."""
    opt = torch.optim.SGD(params, lr=LR)
    factor = (lambda k: LR_FACTOR if k >= LR_RAISE_AFTER else 1.0) if lr_raise else (lambda k: 1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def alert_keys(monitor):
    return [(a.step, a.metric, a.kind) for a in monitor.alerts]


def cpu_fp16_scaler():
    """A GradScaler for CPU autocast fp16 (the frameworks create none on CPU)."""
    return torch.amp.GradScaler("cpu", init_scale=1024.0)  # no backoff before the planted overflow


def decorator_run(lr_raise=False, nan_step=None, steps=STEPS, fp16=False):
    """The reference: the same training in a hand-written loop under @watch_training
    (``fp16``: CPU autocast fp16 with a GradScaler, the overflow batches planted)."""
    model = make_mlp()
    opt, sched = make_optimizer(model.parameters(), lr_raise)
    x, y = make_data(nan_step, overflow=fp16)
    scaler = cpu_fp16_scaler() if fp16 else None

    @watch_training(**OPTIONS, scaler=scaler)
    def train_step(model, xb, yb):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            loss = nn.functional.mse_loss(model(xb).float(), yb)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sched.step()
        return loss.detach()

    for i in range(steps):
        train_step(model, x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH])
    return train_step.monitor


def count_host_syncs(obj, names):
    """Wrap ``obj``'s methods ``names`` so that every scalar read of a tensor inside them (a host
    sync on a GPU: ``.item()``, ``bool()``, ``float()``...) is counted; returns the counter:
    "syncs" for tensors on a device, "cpu_reads" for CPU tensors (memory reads; on CPU the monitor
    reads each step's loss and gradient norms that way, unless ``StatsBuffer.host_scalars`` is off)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counter = {"syncs": 0, "cpu_reads": 0, "calls": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                counter["syncs" if args[0].device.type != "cpu" else "cpu_reads"] += 1
            return func(*args, **(kwargs or {}))

    for name in names:
        original = getattr(obj, name)

        def counted(*args, _original=original, **kwargs):
            counter["calls"] += 1
            with Count():
                return _original(*args, **kwargs)

        setattr(obj, name, counted)
    return counter
