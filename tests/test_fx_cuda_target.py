"""The CUDA target of the memory simulation, checked on CPU: allocator rules against hand-computed
cases, CUDA autocast dtypes against torch's documented op lists, foreach Adam's temporaries
measured on real CPU tensors, the CUDA SDPA backends' saved tensors, and the target's defaults."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from training_profiler.fx_audit.memory import resolve_target, simulate_training_step  # noqa: E402
from training_profiler.fx_audit.targets.cuda import (  # noqa: E402
    CudaEmulation,
    _sdpa,
    cublas_workspace_bytes,
    sdpa_backend,
)
from training_profiler.fx_audit.targets.cuda_allocator import replay, round_size, segment_size  # noqa: E402

MiB = 1 << 20


# --- the caching allocator (c10/cuda/CUDACachingAllocator.cpp) ----------------------------------


@pytest.mark.parametrize("request_bytes, rounded", [(0, 0), (1, 512), (512, 512), (513, 1024), (4000, 4096),
                                                    (8400, 8704), (MiB + 1, MiB + 512)])
def test_requests_are_rounded_to_512_byte_blocks(request_bytes, rounded):
    assert round_size(request_bytes) == rounded


@pytest.mark.parametrize("rounded, segment", [(512, 2 * MiB), (MiB, 2 * MiB), (MiB + 512, 20 * MiB),
                                              (10 * MiB - 512, 20 * MiB), (10 * MiB, 10 * MiB),
                                              (10 * MiB + 512, 12 * MiB), (100 * MiB + 1, 102 * MiB)])
def test_segment_sizes_follow_the_three_pools(rounded, segment):
    assert segment_size(rounded) == segment


def test_small_requests_share_one_2mib_segment():
    # 3 x 600 KiB: the first opens a 2 MiB segment, the others are split off its free rest
    result = replay([(1, 600 * 1024), (2, 600 * 1024), (3, 600 * 1024)])
    assert result.segments == [2 * MiB]
    assert result.peak_allocated == 3 * 600 * 1024 and result.peak_reserved == 2 * MiB


def test_freed_blocks_merge_and_are_reused_best_fit():
    # two 5 MiB blocks from one 20 MiB segment, both freed: they merge with the 10 MiB rest into
    # 20 MiB, which then holds a 12 MiB request without a new segment
    result = replay([(1, 5 * MiB), (2, 5 * MiB), (1, -5 * MiB), (2, -5 * MiB), (3, 12 * MiB)])
    assert result.segments == [20 * MiB]
    assert result.peak_allocated == 12 * MiB and result.peak_reserved == 20 * MiB


def test_fragmentation_opens_a_new_segment():
    # A and B take 10 MiB of a 20 MiB segment; A freed leaves 5 MiB + 10 MiB free, not adjacent:
    # 6 MiB fits the 10 MiB tail, then 12 MiB fits nowhere: a new 12 MiB segment
    result = replay([(1, 5 * MiB), (2, 5 * MiB), (1, -5 * MiB), (3, 6 * MiB), (4, 12 * MiB)])
    assert result.segments == [20 * MiB, 12 * MiB]
    assert result.peak_reserved == 32 * MiB
    assert result.peak_allocated == (5 + 6 + 12) * MiB


def test_unsplit_large_block_is_charged_whole():
    # 11.5 MiB opens a 12 MiB segment; the 0.5 MiB rest is not split off (large pool: > 1 MiB only),
    # so memory_allocated counts 12 MiB
    result = replay([(1, 11 * MiB + 512 * 1024)])
    assert result.peak_allocated == 12 * MiB == result.peak_reserved


def test_reset_at_starts_the_peaks_from_the_current_values():
    result = replay([(1, 30 * MiB), (1, -30 * MiB), (2, 4 * MiB)], reset_at=2)
    assert result.peak_allocated == 4 * MiB  # split off the cached 30 MiB block (rest 26 MiB > 1 MiB)
    assert result.peak_reserved == 30 * MiB  # reserved never drops


# --- cuBLAS workspaces (aten/src/ATen/cuda/CublasHandlePool.cpp) --------------------------------


@pytest.mark.parametrize("capability, env, expected", [
    ((9, 0), {}, 4096 * 1024 * 8),
    ((8, 0), {}, 4096 * 1024 * 2 + 16 * 1024 * 8),
    ((8, 0), {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}, 32 * MiB),
    ((9, 0), {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}, 128 * 1024),
    ((9, 0), {"CUBLAS_WORKSPACE_CONFIG": ":4096:2:16:8"}, 8 * MiB + 128 * 1024),
    ((9, 0), {"CUBLAS_WORKSPACE_CONFIG": "garbage"}, 32 * MiB),
    ((9, 0), {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0"}, 33 * MiB),
    ((9, 0), {"TORCH_CUBLASLT_UNIFIED_WORKSPACE": "0", "CUBLASLT_WORKSPACE_SIZE": "4096"}, 36 * MiB),
])
def test_cublas_workspace_size(capability, env, expected):
    assert cublas_workspace_bytes(capability, env) == expected


# --- CUDA autocast through torch's own AutocastCUDA kernels --------------------------------------

# torch's documented CUDA autocast lists (docs/source/amp.rst, "CUDA Ops that can autocast to
# float16" / "... to float32"), for the ops the test model runs
DOCUMENTED_FP16 = {"linear", "matmul", "conv2d", "bmm", "addmm", "mm"}
DOCUMENTED_FP32 = {"layer_norm", "softmax", "log_softmax", "exp", "sum", "mse_loss", "cross_entropy", "group_norm"}


def _dtypes_under(emulation_dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    model = nn.ModuleDict({"conv": nn.Conv2d(3, 4, 3), "gn": nn.GroupNorm(2, 4), "fc": nn.Linear(16, 16),
                           "ln": nn.LayerNorm(16)})
    got = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        image, x, w = torch.empty(2, 3, 6, 6), torch.empty(4, 16), torch.empty(16, 16)
        labels = torch.zeros(4, dtype=torch.long)
        with CudaEmulation(emulation_dtype):
            got["conv2d"] = model["conv"](image).dtype
            got["group_norm"] = model["gn"](model["conv"](image)).dtype
            h = model["fc"](x)
            got["linear"] = h.dtype
            got["matmul"] = (x @ w).dtype
            got["mm"] = torch.mm(x, w).dtype
            got["addmm"] = torch.addmm(x, x, w).dtype
            got["bmm"] = torch.bmm(x[None], w[None]).dtype
            got["layer_norm"] = model["ln"](h).dtype
            got["softmax"] = h.softmax(-1).dtype
            got["log_softmax"] = F.log_softmax(h, -1).dtype
            got["exp"] = h.exp().dtype
            got["sum"] = h.sum().dtype
            got["mse_loss"] = F.mse_loss(h, h).dtype
            got["cross_entropy"] = F.cross_entropy(h, labels).dtype
            got["relu"] = torch.relu(h).dtype  # in no list: runs in its input's dtype
            got["add"] = (h + x).dtype  # not listed either: ordinary type promotion
    return got


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_cuda_autocast_dtypes_match_the_documented_lists(low):
    got = _dtypes_under(low)
    for op in DOCUMENTED_FP16:
        assert got[op] == low, op
    for op in DOCUMENTED_FP32:
        assert got[op] == torch.float32, op
    assert got["relu"] == low and got["add"] == torch.float32


def test_cuda_autocast_differs_from_cpu_autocast_where_the_lists_differ():
    # CPU autocast has no softmax/exp/layer_norm/sum in its fp32 list: they stay bf16 there
    x = torch.randn(4, 16)
    fc = nn.Linear(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = fc(x)
        cpu = {"softmax": h.softmax(-1).dtype, "exp": h.exp().dtype, "sum": h.sum().dtype}
    assert cpu == {"softmax": torch.bfloat16, "exp": torch.bfloat16, "sum": torch.bfloat16}
    assert all(_dtypes_under(torch.bfloat16)[op] == torch.float32 for op in cpu)


def test_autocast_off_leaves_dtypes_alone():
    got = _dtypes_under(None)
    assert set(got.values()) == {torch.float32}


# --- optimizers: foreach on CUDA ----------------------------------------------------------------


def _measured_step_peak(params, **kwargs) -> int:
    """Real CPU allocator peak above the live bytes during the second step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    opt = torch.optim.Adam(params, **kwargs)
    opt.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    live = peak = 0
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def test_foreach_adam_temporaries_measured_on_cpu():
    # foreach Adam holds sqrt(exp_avg_sq) of every parameter at once (torch._foreach_sqrt):
    # (1000 + 300*7) * 4 bytes; the for-loop keeps two of the largest parameter's size plus the
    # previous parameter's denom (the Python variable lives until reassigned)
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(1000)), nn.Parameter(torch.randn(300, 7))]
    for p in params:
        p.grad = torch.randn_like(p)
    foreach = _measured_step_peak(params, foreach=True)
    assert 12400 <= foreach <= 12400 + 64  # a few scalar tensors on top
    for_loop = _measured_step_peak(params, foreach=False)
    assert 4000 + 2 * 8400 <= for_loop <= 4000 + 2 * 8400 + 64


def _optimizer_transient(report) -> int:
    live = [t["live_bytes"] for t in report.timeline if t["phase"] == "optimizer"]
    return max(live) - min(live)


def test_cuda_target_simulates_foreach_adam_and_fused_without_temporaries():
    model = nn.Linear(1000, 1, bias=False)
    # foreach: one sqrt copy of the 4000-byte weight, in a 4096-byte block
    assert _optimizer_transient(simulate_training_step(model, (4, 1000), target="cuda")) == 4096
    # CPU target: the for-loop's sqrt and division results
    assert _optimizer_transient(simulate_training_step(model, (4, 1000), target="cpu")) == 8000
    fused = simulate_training_step(model, (4, 1000), target="cuda", optimizer="adam-fused")
    assert _optimizer_transient(fused) == 0


def test_cuda_target_state_holds_blocks_and_keeps_step_counters_on_the_host():
    model = nn.Linear(1000, 1, bias=False)
    foreach = simulate_training_step(model, (4, 1000), target="cuda")
    fused = simulate_training_step(model, (4, 1000), target="cuda", optimizer="adam-fused")
    assert foreach.breakdown["params"] == foreach.breakdown["grads"] == 4096
    assert foreach.breakdown["optimizer_state"] == 2 * 4096  # exp_avg, exp_avg_sq; step on the host
    assert fused.breakdown["optimizer_state"] == 2 * 4096 + 512  # fused keeps step on the device


# --- SDPA ---------------------------------------------------------------------------------------


def _saved(dtype, mask=None, dropout=0.0, heads=64):
    from torch._subclasses.fake_tensor import FakeTensorMode

    saved = []
    with FakeTensorMode():
        q = torch.empty(2, 4, 100, heads, dtype=dtype, requires_grad=True)
        k, v = q * 1, q * 1
        m = None if mask is None else torch.empty(100, 100, dtype=mask)
        backend = sdpa_backend(q, k, v, m)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((tuple(t.shape), t.dtype)) or t,
                                                      lambda t: t):
            _sdpa(q, k, v, attn_mask=m, dropout_p=dropout, is_causal=mask is None)
    return backend, saved


def test_flash_attention_saves_logsumexp_and_rng_state():
    backend, saved = _saved(torch.bfloat16, dropout=0.1)
    qkv = ((2, 4, 100, 64), torch.bfloat16)
    assert backend == "flash"
    assert saved == [qkv, qkv, qkv, ((2, 4, 100), torch.float32), qkv, ((2,), torch.uint64), ((), torch.uint64)]


def test_memory_efficient_attention_pads_logsumexp_and_saves_seed_and_offset():
    backend, saved = _saved(torch.float32)
    qkv = ((2, 4, 100, 64), torch.float32)
    assert backend == "efficient"
    # logsumexp rows padded to a multiple of 32 (100 -> 128)
    assert saved == [qkv, qkv, qkv, ((2, 4, 128), torch.float32), qkv, ((), torch.int64), ((), torch.int64)]


def test_a_mask_rules_flash_out_and_becomes_an_additive_bias():
    backend, saved = _saved(torch.bfloat16, mask=torch.bool)
    assert backend == "efficient"
    assert saved[0] == ((100, 100), torch.bfloat16)  # bool mask converted to the query's dtype


def test_math_backend_saves_the_attention_matrix():
    backend, saved = _saved(torch.float64)
    assert backend == "math"
    assert ((2, 4, 100, 100), torch.float64) in saved


def test_backend_choice_by_dtype_and_head_dim():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        def q(dtype, head=64):
            return torch.empty(1, 2, 8, head, dtype=dtype)

        assert sdpa_backend(q(torch.float16), q(torch.float16), q(torch.float16)) == "flash"
        assert sdpa_backend(q(torch.bfloat16, 512), q(torch.bfloat16, 512), q(torch.bfloat16, 512)) == "efficient"
        assert sdpa_backend(q(torch.bfloat16), q(torch.bfloat16), q(torch.bfloat16), capability=(7, 5)) == "math"
        assert sdpa_backend(q(torch.float16), q(torch.float16), q(torch.float16), capability=(7, 5)) == "efficient"


def test_sdpa_on_fake_cuda_tensors_gives_the_same_saved_shapes():
    # the flash op itself on fake CUDA tensors (no autograd: a CPU-only build cannot run it on CUDA)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 100, 64, dtype=torch.bfloat16, device="cuda")
        out, logsumexp, *_, rng_state, _, _ = torch.ops.aten._scaled_dot_product_flash_attention(q, q, q, 0.1, True)
    assert out.device.type == "cuda" and tuple(logsumexp.shape) == (2, 4, 100) and logsumexp.dtype == torch.float32
    assert tuple(rng_state.shape) == (2,) and rng_state.dtype == torch.uint64


# --- target selection and the report -------------------------------------------------------------


def test_default_target_is_the_model_device_and_cuda_for_meta_or_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert resolve_target(nn.Linear(2, 2)) == "cpu"
    with torch.device("meta"):
        assert resolve_target(nn.Linear(2, 2)) == "cuda"
    with FakeTensorMode():
        fake = nn.Linear(2, 2)
    assert resolve_target(fake) == "cuda"
    assert resolve_target(nn.Linear(2, 2), "cuda") == "cuda"
    with pytest.raises(ValueError, match="unknown target 'tpu': use one of cpu, cuda"):
        resolve_target(nn.Linear(2, 2), "tpu")


def test_cuda_report_adds_workspaces_reserved_bytes_and_says_its_target():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    cuda = simulate_training_step(model, (8, 256))
    cpu = simulate_training_step(model, (8, 256), target="cpu")
    assert cuda.target == "cuda" and cpu.target == "cpu" and cpu.reserved_bytes is None
    # parameters in 512-byte blocks: 256*512*4 + 512*4 + 512*10*4 + 10*4 (-> 512)
    assert cuda.breakdown["params"] == 524288 + 2048 + 20480 + 512
    assert cpu.breakdown["params"] == 524288 + 2048 + 20480 + 40
    # two cuBLAS workspaces (the step's thread and autograd's backward thread), 32 MiB each on sm90,
    # and foreach Adam's one sqrt copy of all parameters at once (the CPU for-loop's two copies of
    # the largest parameter are more)
    assert cuda.peak_phase == cpu.peak_phase == "optimizer"
    assert cuda.breakdown["temporaries"] == 2 * 32 * MiB + 547328
    assert cuda.reserved_bytes >= cuda.peak_bytes and cuda.reserved_bytes % (2 * MiB) == 0
    assert cuda.fragmentation_bytes == cuda.reserved_bytes - cuda.peak_bytes
    assert any("cuBLAS workspace" in note for note in cuda.notes)


def test_cli_target_option_and_config_key(tmp_path, capsys):
    from training_profiler.cli import main
    from training_profiler.fx_audit.config import load_config

    assert main(["audit", "training_profiler.fx_audit.zoo:mlp", "--input", "4,784", "--format", "json",
                 "--target", "cuda"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["memory"]["target"] == "cuda" and report["memory"]["reserved_bytes"] > 0
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.training-profiler.audit.models.m]\nfactory = "x:y"\ninputs = ["2,4"]\n'
                         'target = "cuda"\n')
    assert load_config(pyproject)[1][0].target == "cuda"
    pyproject.write_text('[tool.training-profiler.audit.models.m]\nfactory = "x:y"\ninputs = ["2,4"]\n'
                         'target = "gpu"\n')
    with pytest.raises(ValueError, match="unknown target 'gpu' for model 'm'"):
        load_config(pyproject)


# --- bench/gpu_check.py --------------------------------------------------------------------------


def test_gpu_check_exits_cleanly_without_a_gpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run for minutes")
    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing checked"]
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_markdown_table():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    row = {"model": "mlp", "mode": "fp32", "predicted": {"allocated": 104 * MiB, "reserved": 120 * MiB},
           "measured": {"allocated": 100 * MiB, "reserved": 128 * MiB}, "error_allocated": 0.04,
           "error_reserved": -0.0625, "ok": True}
    result = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "cuda": "12.8", "capability": "9.0", "seconds": 300.0,
              "memory": [row, {"model": "lstm", "mode": "bf16", "error": "RuntimeError: boom", "ok": False}],
              "monitor": {"syncs_per_step": 0.0, "unmonitored_syncs_per_step": 0.0,
                          "error_mode": "no sync raised", "plain_ms": 10.0,
                          "monitored_ms": 10.05, "added_fraction": 0.005},
              "analyze_tensor": [{"tensor": "normal 1024x512", "max_rel_diff": 0.0, "ok": True}]}
    lines = gpu_check.markdown(result).splitlines()
    assert lines[0] == "# GPU check: NVIDIA H100 80GB HBM3"
    assert "| mlp | fp32 | 104.0 | 100.0 | +4.0% | 120.0 | 128.0 | -6.2% | yes |" in lines
    assert "| lstm | bf16 | failed: RuntimeError: boom | | | | | | no |" in lines
    assert "| 0.00 | 0.00 | no sync raised | 10.000 | 10.050 | +0.50% |" in lines
    assert "| normal 1024x512 | 0.00e+00 | yes |" in lines
