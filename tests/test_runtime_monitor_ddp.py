"""@watch_training under DistributedDataParallel: 2 CPU processes, gloo backend. The statistics
are reduced over ranks (loss = mean of the ranks' losses, not one shard's) and alerts are logged
by rank 0 only. Fault injection: whatever one rank switches off, every rank switches off in the
same periodic collective, so no rank is left waiting in a collective the others skipped."""

import gc
import json
import logging
import math
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

STEPS, SPIKE_STEP = 60, 45


def _ddp_training(watch_training, **options):
    """A small DDP regression model and its watched train step (same initial weights on every rank)."""
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    @watch_training(warmup_steps=20, transfer_every=5, **options)
    def train_step(model, x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, train_step


def _shut_down():
    """Release every DDP model (its reducer holds the process group) and let both ranks arrive
    before the group goes: a gloo group torn down at interpreter exit, or while the other rank
    still talks to it, aborts the process ("terminate called without an active exception")."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


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
        model, train_step = _ddp_training(watch_training)
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
        _shut_down()


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


# -- fault injection: a switch-off on one rank keeps the collectives in step ----------------------
FAULT_STEPS, FAULT_FROM = 30, 12
FAULTS = ("grad_norm_on_rank1", "status_on_rank0", "monitor_on_rank1")


def _inject(fault, rank, state):
    """Break one thing on one rank from step FAULT_FROM on (``fault``: what, on which rank);
    returns the function that undoes it."""
    from training_profiler.runtime.detectors import HostDetectors
    from training_profiler.runtime.device_stats import StatsBuffer

    if fault == "grad_norm_on_rank1" and rank == 1:  # one metric's device op fails
        original = torch._foreach_norm

        def foreach_norm(*args, **kwargs):
            if state["step"] >= FAULT_FROM:
                raise RuntimeError("injected: foreach_norm failed")
            return original(*args, **kwargs)

        torch._foreach_norm = foreach_norm
        return lambda: setattr(torch, "_foreach_norm", original)
    if fault == "status_on_rank0" and rank == 0:  # a host-side error where only rank 0 works
        original_status = HostDetectors.status

        def status(self, rec):
            raise RuntimeError("injected: status line failed")

        HostDetectors.status = status
        return lambda: setattr(HostDetectors, "status", original_status)
    if fault == "monitor_on_rank1" and rank == 1:  # the step cycle itself fails (its NaN/Inf check of each row)
        original_check = StatsBuffer.nonfinite_norm

        def check(self, *args):
            if state["step"] >= FAULT_FROM:
                raise RuntimeError("injected: row check failed")
            return original_check(self, *args)

        StatsBuffer.nonfinite_norm = check
        return lambda: setattr(StatsBuffer, "nonfinite_norm", original_check)
    return lambda: None


def _fault_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a collective out of step would otherwise wait 30 min; the test's own deadline is shorter
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        from training_profiler import watch_training

        logger = logging.getLogger("training_profiler")
        logger.setLevel(logging.INFO)
        for fault in FAULTS:  # one after the other in the same process group: each must leave it in step
            logged = []
            handler = logging.Handler()
            handler.emit = lambda record, logged=logged: logged.append(record.getMessage())
            logger.addHandler(handler)
            state = {"step": 0}
            undo = _inject(fault, rank, state)
            model, train_step = _ddp_training(watch_training, log_every=5)
            g = torch.Generator().manual_seed(100 + rank)
            done = 0
            for step in range(1, FAULT_STEPS + 1):
                state["step"] = step
                x = torch.randn(16, 8, generator=g)
                train_step(model, x, x.sum(1, keepdim=True))
                done += 1
            monitor = train_step.monitor
            monitor.close()
            undo()
            logger.removeHandler(handler)
            result = {"done": done, "history": monitor.history, "logged": logged}
            del model, train_step, monitor
            with open(os.path.join(out_dir, f"{fault}.rank{rank}.json"), "w") as f:
                json.dump(result, f)
    finally:
        _shut_down()


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    """Both ranks must finish every fault scenario within the deadline: a rank left waiting in a
    collective fails the tests."""
    out, deadline_s = tmp_path_factory.mktemp("faults"), 180.0
    context = mp.start_processes(_fault_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False,
                                 start_method="spawn")
    end = time.monotonic() + deadline_s
    while not context.join(timeout=max(0.1, end - time.monotonic())):
        if time.monotonic() >= end:
            for process in context.processes:
                process.kill()
            pytest.fail(f"a rank hung: the fault scenarios did not finish within {deadline_s:.0f} s")
    return {fault: [json.loads((out / f"{fault}.rank{r}.json").read_text()) for r in (0, 1)] for fault in FAULTS}


def test_ddp_a_metric_switched_off_on_one_rank_is_switched_off_on_all(fault_runs):
    r0, r1 = fault_runs["grad_norm_on_rank1"]
    assert r0["done"] == r1["done"] == FAULT_STEPS
    assert r0["history"] == r1["history"]  # the same, reduced, statistics on both ranks
    assert [r["step"] for r in r0["history"]] == list(range(1, FAULT_STEPS + 1))
    # agreed in the collective after step 15: the batch 11-15 mixes measured and unmeasured ranks,
    # so it is reported as not measured rather than as NaN
    assert [r["step"] for r in r0["history"] if "grad_norm" in r] == list(range(1, 11))
    assert all(not any(isinstance(v, float) and math.isnan(v) for v in r.values()) for r in r0["history"])
    assert [m for m in r1["logged"] if "internal error" in m] == [
        "[Monitor] internal error while computing grad_norm (RuntimeError: injected: foreach_norm failed); "
        "this metric is disabled, training continues"]
    assert [m for m in r0["logged"] if "another rank" in m] == [
        "[Monitor] grad_norm was switched off on another rank after an internal error; it is off here too"]


def test_ddp_a_host_side_error_on_rank0_alone_does_not_hang_rank1(fault_runs):
    r0, r1 = fault_runs["status_on_rank0"]
    assert r0["done"] == r1["done"] == FAULT_STEPS
    assert r0["history"] == r1["history"]
    assert [r["step"] for r in r0["history"] if "grad_norm" in r] == list(range(1, FAULT_STEPS + 1))
    assert [m for m in r0["logged"] if "internal error" in m] == [
        "[Monitor] internal error while computing status (RuntimeError: injected: status line failed); "
        "this metric is disabled, training continues"]
    assert not any("error" in m for m in r1["logged"])  # a host-side statistic: rank 1 is not affected


def test_ddp_the_monitor_stopping_on_one_rank_stops_it_on_all_without_a_hang(fault_runs):
    r0, r1 = fault_runs["monitor_on_rank1"]
    assert r0["done"] == r1["done"] == FAULT_STEPS  # training itself went on to the end
    assert [r["step"] for r in r0["history"]] == [r["step"] for r in r1["history"]] == list(range(1, 11))
    assert [m for m in r1["logged"] if "internal error" in m] == [
        "[Monitor] internal error (RuntimeError: injected: row check failed); monitoring stops, training continues"]
    assert [m for m in r0["logged"] if "another rank" in m] == [
        "[Monitor] monitoring was stopped on another rank after an internal error; it stops here too"]
