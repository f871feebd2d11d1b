"""@watch_training under DistributedDataParallel: 2 CPU processes, gloo backend. The statistics
are reduced over ranks (loss = mean of the ranks' losses, not one shard's) and alerts are logged
by rank 0 only."""

import json
import logging
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

STEPS, SPIKE_STEP = 60, 45


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from training_profiler import watch_training

        logged = []
        handler = logging.Handler()
        handler.emit = lambda record: logged.append(record.getMessage())
        logging.getLogger("training_profiler").addHandler(handler)
        torch.manual_seed(0)  # same initial weights on both ranks
        model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)))
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        @watch_training(warmup_steps=20, transfer_every=5)
        def train_step(model, x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss

        g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of the data
        local = []
        for step in range(1, STEPS + 1):
            x = torch.randn(16, 8, generator=g)
            if rank == 1 and step == SPIKE_STEP:
                x = x * 100  # a corrupt batch on rank 1 only
            local.append(train_step(model, x, x.sum(1, keepdim=True)).item())
        monitor = train_step.monitor
        monitor.close()
        result = {
            "local_loss": local,
            "loss": [r["loss"] for r in monitor.history],
            "grad_norm": [r["grad_norm"] for r in monitor.history],
            "layers": monitor.layers,
            "alerts": [(a.step, a.metric, a.kind) for a in monitor.alerts],
            "logged_alerts": [m for m in logged if m.startswith("[ALERT]")],
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_gloo_reduced_statistics_and_rank0_alerts(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # reduced loss: the mean over both ranks, identical on both
    for step in range(STEPS):
        mean = (r0["local_loss"][step] + r1["local_loss"][step]) / 2
        assert abs(r0["loss"][step] - mean) <= 1e-5 * max(1.0, abs(mean))
        assert r0["loss"][step] == r1["loss"][step]
        assert r0["grad_norm"][step] == r1["grad_norm"][step]  # DDP gradients are already all-reduced
    assert r0["layers"] == ["0", "2"]  # DDP's "module." prefix is not part of the layer name
    # rank 1's corrupt batch shows in the reduced statistics: rank 0 raises and logs the alert
    assert [SPIKE_STEP, "grad_norm", "spike"] in r0["alerts"]  # JSON: lists
    assert any(m.startswith(f"[ALERT] Step {SPIKE_STEP} | grad_norm:") for m in r0["logged_alerts"])
    assert r1["alerts"] == r0["alerts"] and r1["logged_alerts"] == []
