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
