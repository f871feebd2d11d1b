"""@watch_training under FSDP2 (``fully_shard``): 2 CPU processes, gloo backend. Each rank holds
a shard of every gradient; the monitor's norms are global, from the ranks' local sums of squares
in its periodic all-reduce, and equal the total norm ``clip_grad_norm_`` returns at the same
step. A corrupt batch on rank 1 alerts on rank 0. The fp16/bf16 gradient overflow and underflow
fractions are global too: the ranks' counts are summed, not their fractions averaged."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from test_runtime_monitor_ddp import _free_port, _shut_down  # noqa: E402

fsdp = pytest.importorskip("torch.distributed.fsdp")

STEPS, SPIKE_STEP = 50, 40


def _full_norm(layer):
    """A layer's gradient norm from the gathered (unsharded) gradients."""
    return torch.linalg.vector_norm(torch.cat([p.grad.full_tensor().reshape(-1) for p in layer.parameters()])).item()


# fp16 gradients planted on each rank's shard of a Linear(4, 3) weight: FSDP2 splits its 3 rows
# unevenly, 2 rows (8 values) on rank 0 and 1 row (4 values) on rank 1
PLANTED = {0: [[1.0, 1.0, 1.0, 1.0], [40000.0, 1e-6, 1e-6, 0.0]],  # 1 near the fp16 max, 2 of 7 non-zero subnormal
           1: [[40000.0, 40000.0, 1e-6, 0.5]]}  # 2 of 4 near the max, 1 of 4 non-zero subnormal


def _planted_grad_precision(rank):
    """The history of two steps whose fp16 gradients are PLANTED (step 1 is a precision step)."""
    from training_profiler.runtime import TrainingMonitor

    layer = nn.Linear(4, 3, bias=False).half()
    fsdp.fully_shard(layer)
    monitor = TrainingMonitor(layer, warmup_steps=10, transfer_every=2)
    for _ in range(2):
        monitor.begin_step()
        layer.weight.grad = torch.zeros_like(layer.weight)
        layer.weight.grad.to_local().copy_(torch.tensor(PLANTED[rank], dtype=torch.float16))
        monitor.observe_gradients()
        monitor.observe_step(torch.tensor(1.0))
    monitor.close()
    return monitor.history


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
                  "alerts": [(a.step, a.metric, a.kind) for a in monitor.alerts],
                  "planted": _planted_grad_precision(rank)}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        _shut_down()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 ranks wrote (one spawn for the module's tests)."""
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_fsdp2_norms_are_global_and_equal_clip_grad_norm(ranks):
    r0, r1 = ranks
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


def test_fsdp2_gradient_overflow_and_underflow_fractions_are_those_of_the_whole_gradient(ranks):
    # overflow: 1 + 2 of 8 + 4 values (the mean of the ranks' fractions, (1/8 + 2/4) / 2, would be 0.3125);
    # underflow: 2 + 1 of 7 + 4 non-zero values (the mean would be (2/7 + 1/4) / 2 = 0.268)
    for history in (r["planted"] for r in ranks):
        assert (history[0]["grad_overflow"], history[0]["grad_underflow"]) == (3 / 12, 3 / 11)
        assert "grad_overflow" not in history[1]  # not a precision step
