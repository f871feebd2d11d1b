"""Per-rank plans (fx_audit.parallel): FSDP2 and DDP end to end at world size 2 against
hand-computed shard sizes, ZeRO-1's partition, DeepSpeed's formulas and the bad-input errors."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from training_profiler.fx_audit import audit  # noqa: E402
from training_profiler.fx_audit.parallel import simulate_parallel_step  # noqa: E402
from training_profiler.fx_audit.parallel.ddp import bucket_sizes  # noqa: E402
from training_profiler.fx_audit.parallel.fsdp import shard_rows  # noqa: E402
from training_profiler.fx_audit.parallel.zero import (  # noqa: E402
    deepspeed_estimator_bytes,
    deepspeed_model_states,
)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


class Tiny(nn.Module):
    """595 parameters: two blocks of 16x16 + 16, a head of 3x16 + 3 (3 rows: uneven at 2 ranks)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block() for _ in range(2)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


INPUTS = (torch.empty(4, 16),)


@pytest.fixture(scope="module")
def fsdp_report():
    model = Tiny()
    before = {n: (type(p), p.data_ptr()) for n, p in model.named_parameters()}
    report = audit(model, INPUTS, optimizer="adamw", parallel="fsdp", world_size=2, rules=False)
    assert {n: (type(p), p.data_ptr()) for n, p in model.named_parameters()} == before  # untouched
    return report


def test_shard_rows_pad_uneven_dim0_like_torch_chunk():
    # ceil(rows / world) rows per rank; the last ranks hold fewer, or none
    assert [shard_rows(3, 2, r) for r in range(2)] == [2, 1]
    assert [shard_rows(7, 4, r) for r in range(4)] == [2, 2, 2, 1]
    assert [shard_rows(5, 4, r) for r in range(4)] == [2, 2, 1, 0]
    assert [shard_rows(16, 2, r) for r in range(2)] == [8, 8]


def test_fsdp_world_2_per_rank_shards(fsdp_report):
    memory = fsdp_report.memory
    assert memory.parallel == "fsdp" and memory.world_size == 2
    rank0, rank1 = memory.per_rank
    assert (rank0.ranks, rank1.ranks) == ([0], [1])
    # sharded storage is padded alike on both ranks: per block 8x16 + 8, head 2 rows x16 + 2
    # (rank 1 holds 1 real row and 1 row of padding) -> 2 * 136 + 34 = 306 fp32 elements
    assert rank0.breakdown["params"] == rank1.breakdown["params"] == 306 * 4
    # AdamW state covers the unpadded local shard: rank 0 306, rank 1 2*136 + 16 + 1 = 289 elements,
    # two fp32 moments each, plus one 4-byte step per parameter (6 parameters)
    assert rank0.breakdown["optimizer_state"] == 306 * 8 + 6 * 4
    assert rank1.breakdown["optimizer_state"] == 289 * 8 + 6 * 4
    assert rank0.peak_bytes - rank1.peak_bytes == (306 - 289) * 8
    assert fsdp_report.totals["peak_bytes"] == rank0.peak_bytes == memory.peak_bytes
    # every unit is gathered padded (2 * 272 + 4*16 + 4 = 612 fp32 elements) in forward and again
    # in backward (reshard_after_forward=True); the padded gradients are reduce-scattered once
    assert memory.comm_bytes == {"all_gather": 2 * 612 * 4, "reduce_scatter": 612 * 4}
    for key in ("unsharded_params", "unsharded_grads", "comm_buffers", "activations"):
        assert key in rank0.breakdown
    assert sum(rank0.breakdown.values()) == rank0.peak_bytes


def test_ddp_world_2_adds_one_bucket_byte_per_gradient_byte():
    model = Tiny()
    single = audit(model, INPUTS, optimizer="adamw", rules=False).memory
    report = audit(model, INPUTS, optimizer="adamw", parallel="ddp", world_size=2, rules=False)
    memory = report.memory
    assert [r.ranks for r in memory.per_rank] == [[0, 1]]  # DDP ranks are identical
    assert memory.breakdown["comm_buffers"] == 595 * 4
    assert memory.peak_bytes == single.peak_bytes + 595 * 4
    assert memory.comm_bytes == {"all_reduce": 595 * 4}
    for key in ("params", "grads", "optimizer_state"):
        assert memory.breakdown[key] == single.breakdown[key]


def test_ddp_buckets_follow_ddps_own_assignment():
    # reversed order: bias2 + weight2 close the 1 MiB first bucket, the rest fills the 25 MiB one
    model = nn.Sequential(nn.Linear(1024, 512), nn.Linear(1024, 512))
    assert bucket_sizes(list(model.parameters())) == [(524800, torch.float32), (524800, torch.float32)]


def test_zero1_partitions_optimizer_state_greedily():
    memory = simulate_parallel_step(Tiny(), INPUTS, optimizer="adamw", parallel="zero1", world_size=2)
    rank0, rank1 = memory.per_rank
    # largest first, each to the rank with the fewest elements: rank 0 gets 256 + 48 (2 params),
    # rank 1 256 + 16 + 16 + 3 (4 params)
    assert rank0.breakdown["optimizer_state"] == 304 * 8 + 2 * 4
    assert rank1.breakdown["optimizer_state"] == 291 * 8 + 4 * 4
    assert memory.comm_bytes == {"all_reduce": 595 * 4, "broadcast": 595 * 4}


def test_deepspeed_formulas_match_the_published_ones():
    params, layer, n = 1000, 100, 4
    stage2 = deepspeed_model_states(2, params, layer, n, "adam")
    assert sum(v for k, v in stage2.items() if k != "comm_buffers") == 2 * params + 18 * params // n
    stage3 = deepspeed_model_states(3, params, layer, n, "adam")
    assert sum(stage3.values()) == 4 * layer + 18 * params // n
    assert deepspeed_estimator_bytes(3, params, layer, n) == sum(stage3.values())
    assert deepspeed_estimator_bytes(2, params, layer, n) == 4 * params + 16 * params // n


@pytest.mark.parametrize("options, message", [
    ({"parallel": "ddp", "world_size": 0}, "world_size=0 must be an integer >= 1"),
    ({"parallel": "tp", "world_size": 2}, "unknown parallel strategy 'tp'"),
    ({"parallel": "fsdp", "world_size": 2, "fsdp_units": ["blocks"]}, "fsdp_units='blocks' names no module"),
    ({"parallel": "ddp", "world_size": 2, "mixed_precision": "bf16"}, "mixed_precision='bf16' is FSDP's"),
    ({"parallel": "ddp", "world_size": 2, "offload": "optimizer"}, "offload='optimizer' is not available with parallel='ddp'"),
    ({"world_size": 4}, "world_size=4 needs a parallel strategy"),
])
def test_bad_options_get_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message) as info:
        audit(Tiny(), INPUTS, **options)
    assert "\n" not in str(info.value)


def test_scalar_parameter_cannot_be_sharded():
    model = Tiny()
    model.scale = nn.Parameter(torch.tensor(1.0))
    with pytest.raises(ValueError, match="parameter 'scale' is a scalar and cannot be sharded along dim 0"):
        audit(model, INPUTS, parallel="fsdp", world_size=2)


def test_plan_table_recommends_the_fitting_strategy_with_least_communication():
    from training_profiler.fx_audit.parallel import plan_strategies, render_plan

    model = Tiny()
    ddp = simulate_parallel_step(model, INPUTS, optimizer="adamw", parallel="ddp", world_size=2).peak_bytes
    fsdp = simulate_parallel_step(model, INPUTS, optimizer="adamw", parallel="fsdp", world_size=2).peak_bytes
    assert fsdp < ddp
    plan = plan_strategies(model, INPUTS, world_size=2, budget=fsdp, optimizer="adamw", checkpointing=False,
                           solve_batch=False)
    rows = {r.strategy: r for r in plan.rows}
    assert list(rows) == ["ddp", "zero1", "fsdp-zero2", "fsdp-zero3", "fsdp-zero3+offload"]
    assert rows["ddp"].peak_bytes == ddp and rows["ddp"].fits is False
    assert rows["fsdp-zero3"].peak_bytes == fsdp and rows["fsdp-zero3"].fits is True
    # fsdp-zero2 gathers once (2448 B), reduce-scatters once (2448 B): less than ZeRO-3's second gather
    assert rows["fsdp-zero2"].comm_bytes == {"all_gather": 2448, "reduce_scatter": 2448}
    fitting = [r for r in plan.rows if r.fits]
    assert plan.recommendation == min(
        fitting, key=lambda r: (r.comm_total, "offload" in r.strategy, r.peak_bytes)).strategy
    assert plan.recommendation != "fsdp-zero3+offload"  # same communication as fsdp-zero3, which fits
    text = render_plan(plan)
    assert f"recommendation: {plan.recommendation}" in text
    assert render_plan(plan, "markdown").count("\n| ") == 6  # header + 5 strategies


def test_reusing_simulations_runs_each_rank_step_once_with_the_same_reports(monkeypatch):
    import copy

    from training_profiler.fx_audit import memory
    from training_profiler.fx_audit.parallel import reusing_simulations

    model = Tiny()
    fresh = {offload: simulate_parallel_step(model, INPUTS, optimizer="adamw", parallel="fsdp", world_size=2,
                                             offload=offload) for offload in (None, "params")}
    runs = []
    simulate = memory.simulate_training_step
    monkeypatch.setattr(memory, "simulate_training_step", lambda *a, **k: runs.append(1) or simulate(*a, **k))
    with reusing_simulations():
        for _ in range(2):
            for offload in (None, "params"):
                report = simulate_parallel_step(model, INPUTS, optimizer="adamw", parallel="fsdp", world_size=2,
                                                offload=offload)
                expected = copy.copy(fresh[offload])
                for key in ("peak_bytes", "reserved_bytes", "breakdown", "comm_bytes", "notes", "top_tensors"):
                    assert getattr(report, key) == getattr(expected, key)
                assert [r.peak_bytes for r in report.per_rank] == [r.peak_bytes for r in expected.per_rank]
        assert len(runs) == 2  # two distinct ranks (uneven head), each simulated once
        simulate_parallel_step(model, (torch.empty(5, 16),), optimizer="adamw", parallel="fsdp", world_size=2)
        simulate_parallel_step(model, INPUTS, optimizer="sgd", parallel="fsdp", world_size=2)
        simulate_parallel_step(model, INPUTS, optimizer="adamw", parallel="fsdp", world_size=2,
                               reshard_after_forward=False)
        assert len(runs) == 8  # another batch, optimizer or resharding is another step
    simulate_parallel_step(model, INPUTS, optimizer="adamw", parallel="fsdp", world_size=2)
    assert len(runs) == 10  # outside the context nothing is reused


def test_offload_moves_the_sharded_states_out_of_the_cuda_peak_and_reserved_memory():
    base, offloaded = (simulate_parallel_step(Tiny(), INPUTS, optimizer="adamw", parallel="fsdp", world_size=2,
                                              offload=offload, target="cuda") for offload in (None, "params"))
    # rank 0's 6 sharded fp32 parameters (8x16 = 512 bytes, the rest smaller) are one 512-byte CUDA block
    # each; they, their gradients and the AdamW state leave the device
    host = sum(base.breakdown[k] for k in ("params", "grads", "optimizer_state"))
    assert base.breakdown["params"] == 6 * 512
    assert offloaded.breakdown["params"] == offloaded.breakdown["grads"] == offloaded.breakdown["optimizer_state"] == 0
    assert offloaded.peak_bytes == base.peak_bytes - host
    # the batch solver judges CUDA plans on reserved memory: it must drop by as much, or an offload row
    # could never fit a larger micro-batch than its base row
    assert offloaded.reserved_bytes == base.reserved_bytes - host
    assert offloaded.fragmentation_bytes == base.fragmentation_bytes


def test_checkpointing_advisor_picks_the_fewest_blocks():
    from training_profiler.fx_audit.parallel import advise_checkpointing

    # each block saves two 64x64 activations that checkpointing drops (its 64x16 input stays saved)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)) for _ in range(4)])
    inputs = (torch.empty(64, 16),)
    none = simulate_parallel_step(model, inputs, optimizer="sgd").peak_bytes
    every = simulate_parallel_step(model, inputs, optimizer="sgd", checkpoint="blocks").peak_bytes
    assert every < none
    budget = (none + every) // 2
    advice = advise_checkpointing(model, inputs, budget, optimizer="sgd")
    assert advice["peak_bytes"] <= budget < advice["peak_without"] == none and advice["of"] == 4
    assert advice["blocks"] == [f"{i}" for i in range(advice["count"])]
    assert 0 < advice["count"] < 4
    # one more forward of each checkpointed block, 64 rows through 16->64 and 64->16 Linears
    assert advice["recompute_flops"] == advice["count"] * 2 * (2 * 64 * 16 * 64)
    assert advise_checkpointing(model, inputs, none, optimizer="sgd")["count"] == 0


def test_plan_cli_json(capsys):
    import json

    from training_profiler.cli import main

    code = main(["plan", "training_profiler.fx_audit.zoo:mlp", "--input", "8,784", "--gpus", "2",
                 "--gpu-memory", "40MiB", "--format", "json", "--target", "cpu"])
    plan = json.loads(capsys.readouterr().out)
    rows = {r["strategy"]: r for r in plan["rows"]}
    assert code == 0 and plan["world_size"] == 2 and plan["budget"] == 40 * 2**20
    assert rows["ddp"]["fits"] is False and rows["ddp"]["max_micro_batch"] == 0
    # the MLP has 784*1024+1024 + 2*(1024*1024+1024) + 1024*10+10 = 2,913,290 fp32 parameters: DDP
    # all-reduces each gradient byte once per step
    assert rows["ddp"]["comm_bytes"] == {"all_reduce": 2_913_290 * 4}
    assert plan["recommendation"] == min((r for r in plan["rows"] if r["fits"]),
                                         key=lambda r: (r["comm_total"], "offload" in r["strategy"],
                                                        r["peak_bytes"]))["strategy"]


def test_plan_cli_rejects_zero_gpus(capsys):
    from training_profiler.cli import main

    assert main(["plan", "training_profiler.fx_audit.zoo:mlp", "--input", "8,784", "--gpus", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--gpus 0 must be at least 1")


def test_budget_config_names_parallel_and_world_size(tmp_path, monkeypatch, capsys):
    from training_profiler.fx_audit.config import load_config
    from training_profiler.fx_audit.review import run_config

    (tmp_path / "tiny.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))\n")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.training-profiler.audit.models.tiny]\n"
        'factory = "tiny:make"\ninputs = ["4,16"]\noptimizer = "adamw"\n'
        'parallel = "ddp"\nworld-size = 2\nmax-peak-memory = "1KiB"\n')
    monkeypatch.chdir(tmp_path)
    _, (spec,) = load_config(tmp_path / "pyproject.toml")
    assert (spec.parallel, spec.world_size) == ("ddp", 2)
    assert run_config(tmp_path / "pyproject.toml") == 1  # a DDP rank needs far more than 1 KiB
    assert "max-peak-memory" in capsys.readouterr().out


def test_plan_cli_html(tmp_path):
    from training_profiler.cli import main

    out = tmp_path / "plan.html"
    assert main(["plan", "training_profiler.fx_audit.zoo:mlp", "--input", "8,784", "--gpus", "2",
                 "--format", "html", "-o", str(out)]) == 0
    page = out.read_text()
    for strategy in ("ddp", "zero1", "fsdp-zero2", "fsdp-zero3", "fsdp-zero3+offload"):
        assert f">{strategy}<" in page


def test_plan_follows_the_target():
    # the same DDP rank on the CUDA target pays the caching allocator's rounding and the cuBLAS
    # workspaces (fx_audit/targets/cuda.py), so it is never below the CPU target's rank
    from training_profiler.fx_audit.parallel import plan_strategies
    from training_profiler.fx_audit.zoo import mlp

    variants = (("ddp", {"parallel": "ddp"}),)
    inputs = (torch.empty(8, 784),)
    cpu = plan_strategies(mlp(), inputs, world_size=2, variants=variants, target="cpu").rows[0]
    cuda = plan_strategies(mlp(), inputs, world_size=2, variants=variants, target="cuda").rows[0]
    assert cuda.peak_bytes > cpu.peak_bytes and cuda.comm_bytes == cpu.comm_bytes == {"all_reduce": 2_913_290 * 4}


def test_checkpointed_blocks_recompute_under_the_cuda_targets_autocast():
    # the recomputation in backward must see the forward's (emulated) CUDA autocast casts, as
    # torch.utils.checkpoint restores real autocast: else the recomputed tensors are fp32 and
    # checkpointing raises "Recomputed values ... have different metadata"
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)) for _ in range(4)])
    inputs = (torch.empty(64, 16),)
    plain = simulate_parallel_step(model, inputs, optimizer="sgd", amp="bf16", target="cuda")
    ckpt = simulate_parallel_step(model, inputs, optimizer="sgd", amp="bf16", target="cuda", checkpoint="blocks")
    assert ckpt.breakdown["activations"] < plain.breakdown["activations"]


def test_checkpointing_frees_the_recomputed_blocks_like_a_real_run():
    # under DDP the peak is in the optimizer step, when no activation is alive any more: a real
    # run (bench/distributed_memory.py, ddp vs ddp+ckpt) measures the same peak with and without
    # checkpointing. The simulation's module tracker used to keep the recomputed blocks' tensors
    # alive through gradient hooks that never fire, so the checkpointed peak came out higher.
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16)) for _ in range(4)])
    inputs = (torch.empty(4, 16),)
    plain = simulate_parallel_step(model, inputs, optimizer="adamw", parallel="ddp", world_size=2)
    ckpt = simulate_parallel_step(model, inputs, optimizer="adamw", parallel="ddp", world_size=2, checkpoint="blocks")
    assert plain.peak_phase == ckpt.peak_phase == "optimizer"
    assert ckpt.breakdown["activations"] == plain.breakdown["activations"] == 4 * 16 * 4  # the input only
    assert ckpt.peak_bytes == plain.peak_bytes
