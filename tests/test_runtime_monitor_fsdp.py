"""@watch_training under FSDP2 (``fully_shard``): 2 CPU processes, gloo backend. Each rank holds
a shard of every gradient; the monitor's norms are global, from the ranks' local sums of squares
in its periodic all-reduce, and equal the total norm ``clip_grad_norm_`` returns at the same
step. A corrupt batch on rank 1 alerts on rank 0."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from test_runtime_monitor_ddp import _free_port  # noqa: E402

fsdp = pytest.importorskip("torch.distributed.fsdp")

STEPS, SPIKE_STEP = 50, 40


def _full_norm(layer):
    """A layer's gradient norm from the gathered (unsharded) gradients."""
    return torch.linalg.vector_norm(torch.cat([p.grad.full_tensor().reshape(-1) for p in layer.parameters()])).item()


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from training_profiler import watch_training

        torch.manual_seed(0)
        # Linear(3, 1) splits 1 row over 2 ranks: rank 1's shard of it is empty
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3), nn.Linear(3, 1))
        for layer in (model[0], model[2], model[3]):
            fsdp.fully_shard(layer)
        fsdp.fully_shard(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        totals, per_layer = [], []

        @watch_training(warmup_steps=20, transfer_every=5)
        def train_step(model, x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)  # measures, clips nothing
            totals.append(total.full_tensor().item())
            per_layer.append([_full_norm(layer) for layer in (model[0], model[2], model[3])])
            opt.step()
            return loss

        g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        for step in range(1, STEPS + 1):
            x = torch.randn(16, 8, generator=g)
            if rank == 1 and step == SPIKE_STEP:
                x = x * 100  # a corrupt batch on rank 1 only
            train_step(model, x, x.sum(1, keepdim=True))
        monitor = train_step.monitor
        monitor.close()
        result = {"totals": totals, "per_layer": per_layer, "layers": monitor.layers,
                  "grad_norm": [r["grad_norm"] for r in monitor.history],
                  "layer_grad_norms": [r["layer_grad_norms"] for r in monitor.history],
                  "alerts": [(a.step, a.metric, a.kind) for a in monitor.alerts]}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_fsdp2_norms_are_global_and_equal_clip_grad_norm(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["layers"] == ["0", "2", "3"]
    assert len(r0["grad_norm"]) == STEPS
    for step in range(STEPS):
        assert r0["grad_norm"][step] == pytest.approx(r0["totals"][step], rel=1e-5)
        assert r0["layer_grad_norms"][step] == pytest.approx(r0["per_layer"][step], rel=1e-5)
        assert r1["grad_norm"][step] == r0["grad_norm"][step]  # the same reduced value on every rank
    assert r0["totals"] == r1["totals"]
    # rank 1's corrupt batch shows in the global norm: rank 0 alerts at its step
    assert [SPIKE_STEP, "grad_norm", "spike"] in r0["alerts"]
    assert r1["alerts"] == r0["alerts"]
