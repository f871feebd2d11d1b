"""The CPU target's workspace rules: refitted from the committed measurements, and chosen by the
instruction set oneDNN uses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from training_profiler.fx_audit.memory import simulate_training_step  # noqa: E402
from training_profiler.fx_audit.targets import cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _fit_script():
    spec = importlib.util.spec_from_file_location("fit_cpu_workspace", ROOT / "bench" / "fit_cpu_workspace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fitted():
    fit = _fit_script()
    rows = fit.load()
    rnn, rnn_report = fit.fit_rnn(rows)
    gemm, table_text, gemm_report = fit.fit_gemm(rows)
    print("\n".join(["held-out shapes (predicted / measured - 1):", *rnn_report, *gemm_report]))
    return rows, {**rnn, **gemm}, table_text, rnn_report


def test_every_row_records_torch_version_isa_and_threads(fitted):
    rows = fitted[0]
    assert {r["isa"] for r in rows} >= {"AVX2", "AVX512_CORE", "AVX512_CORE_BF16", "AVX10_1_512", "AVX10_1_512_AMX"}
    assert all(r["torch"].startswith("2.") and r["threads"] in (1, 2) for r in rows)
    assert any(r["holdout"] for r in rows) and not all(r["holdout"] for r in rows)


def test_refit_gives_the_constants_in_the_code(fitted):
    _, constants, table_text, _ = fitted
    assert constants == {
        "RNN_WORKSPACE": cpu.RNN_WORKSPACE,
        "RNN_FORWARD_SCRATCH": cpu.RNN_FORWARD_SCRATCH,
        "RNN_BACKWARD_SCRATCH": cpu.RNN_BACKWARD_SCRATCH,
        "GEMM_JIT_BF16": cpu.GEMM_JIT_BF16,
    }
    committed = (ROOT / "training_profiler" / "fx_audit" / "targets" / "cpu_gemm_table.py").read_text()
    assert table_text == committed, "run `python bench/fit_cpu_workspace.py fit --write`"


def test_rnn_envelopes_hold_on_shapes_not_used_to_fit_them(fitted):
    # "predicted P measured M (+x%)": never under, and within 2x
    report = fitted[3]
    errors = [float(line.rsplit("(", 1)[1].rstrip("%)")) for line in report]
    assert len(errors) == 9
    assert all(0 <= e <= 100 for e in errors), report


def test_envelope_is_the_tightest_line_above_the_points():
    fit = _fit_script()
    # y = 2x + 10 through (0, 10) and (10, 30); (5, 15) lies below
    assert fit.envelope([[0, 1], [10, 1], [5, 1]], [10, 30, 15]) == (2.0, 10.0)


# --- which instruction set oneDNN runs --------------------------------------------------------------

_SPR_FLAGS = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"}


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU has the given /proc/cpuinfo flags."""
    def set_flags(values):
        monkeypatch.setattr(cpu, "_cpu_flags", lambda: values)
        cpu.supported_isas.cache_clear()

    yield set_flags
    cpu.supported_isas.cache_clear()


@pytest.mark.parametrize(
    "cpu_flags, cap, expected",
    [
        (_SPR_FLAGS, None, "AVX10_1_512_AMX"),
        (_SPR_FLAGS, "avx512_core_bf16", "AVX512_CORE_BF16"),
        (_SPR_FLAGS, "AVX512_CORE_AMX", "AVX10_1_512_AMX"),  # the older alias
        (_SPR_FLAGS, "AVX2", "AVX2"),
        (_SPR_FLAGS, "SSE41", "AVX2"),  # no oneDNN bf16/fp16 below AVX-512: the same rules as AVX2
        (_SPR_FLAGS, "AVX10_2_512", None),  # newer than the measurements: the envelope over them
        (_SPR_FLAGS - {"avx512_fp16", "amx_tile"}, None, "AVX512_CORE_BF16"),
        ({"avx2", "fma", "avx512f"}, "AVX512_CORE_BF16", "AVX2"),  # the cap cannot raise the CPU's level
        (None, None, None),  # no /proc/cpuinfo
    ],
)
def test_onednn_isa_is_the_cpu_level_capped_by_the_environment(flags, monkeypatch, cpu_flags, cap, expected):
    flags(cpu_flags)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cpu.onednn_isa() == expected


# --- GEMM scratch ------------------------------------------------------------------------------------


def test_gemm_scratch_per_kernel():
    from training_profiler.fx_audit.targets.cpu_gemm_table import GRID, SCRATCH

    amx = ("brg_matmul:avx10_1_512_amx", "bfloat16", "at_b")
    # on a grid point: the measured bytes; (M, K, N) = (512, 64, 128) is index 2*12 + 0*3 + 1
    assert GRID["m"][2] == 512 and GRID["k"][0] == 64 and GRID["n"][1] == 128
    on_grid = cpu.gemm_scratch(*amx, 2, 512, 64, 128)
    assert on_grid == SCRATCH[(*amx, 2)][2 * 12 + 0 * 3 + 1]
    # between grid points: the largest corner of the cell; more threads: per-thread buffers scale
    corners = [SCRATCH[(*amx, 2)][2 * 12 + 0 * 3 + h] for h in (1, 2)]
    assert cpu.gemm_scratch(*amx, 2, 512, 64, 256) == max(corners)
    assert cpu.gemm_scratch(*amx, 8, 512, 64, 128) == 4 * on_grid
    # gemm:jit:bf16 keeps an fp32 copy of the output; no oneDNN kernel, no scratch
    assert cpu.gemm_scratch("gemm:jit:bf16", "bfloat16", "a_b", 2, 64, 256, 512) == 64 * 512 * 4 + 128
    assert cpu.gemm_scratch(None, "bfloat16", "a_b", 2, 64, 256, 512) == 0
    # unknown ISA: the largest of every kernel measured
    known = [cpu.gemm_scratch(k, "bfloat16", "at_b", 2, 512, 64, 256)
             for k in ("gemm:jit:bf16", "brg_matmul:avx512_core_bf16", "brg_matmul:avx10_1_512_amx")]
    assert cpu.gemm_scratch("*", "bfloat16", "at_b", 2, 512, 64, 256) == max(known)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))


@pytest.mark.parametrize("cap", ["AVX2", "AVX512_CORE", "AVX512_CORE_BF16", "AVX10_1_512_AMX"])
def test_pure_bf16_prediction_follows_the_isa(flags, monkeypatch, one_thread, cap):
    """Fake tensors never run oneDNN, so the simulation may read any ISA: the same model gets the
    scratch of the kernel oneDNN would pick there (hand-computed from the table)."""
    flags(_SPR_FLAGS)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    report = simulate_training_step(_mlp(), (64, 256), optimizer="sgd", amp="pure-bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    no_scratch = simulate_training_step(_mlp(), (64, 256), optimizer="sgd", amp="pure-bf16")
    kernel = cpu.gemm_kernel(cap, "bfloat16")
    # with scratch, the peak moves into the weight gradient of layer 0, mm(grad^T, x), (512 x 64) @
    # (64 x 256) on 1 thread, just before layer 0's bias gradient (512 x bf16) exists
    scratch = cpu.gemm_scratch(kernel, "bfloat16", "at_b", 1, 512, 64, 256)
    assert report.peak_bytes - no_scratch.peak_bytes == (scratch - 512 * 2 if scratch else 0)
    assert report.confidence == ("high" if kernel is None else "low")


@pytest.mark.parametrize("amp", ["pure-bf16", "pure-fp16"])
def test_unknown_isa_takes_the_largest_scratch_of_the_isas_measured(flags, monkeypatch, one_thread, amp):
    flags(_SPR_FLAGS)
    peaks = {}
    for cap in ("AVX2", "AVX512_CORE", "AVX512_CORE_BF16", "AVX10_1_512", "AVX10_1_512_AMX"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        peaks[cap] = simulate_training_step(_mlp(), (64, 256), optimizer="sgd", amp=amp).peak_bytes
    flags(None)  # no /proc/cpuinfo
    unknown = simulate_training_step(_mlp(), (64, 256), optimizer="sgd", amp=amp)
    assert unknown.peak_bytes == max(peaks.values())
    assert unknown.confidence == "low"
    assert any("oneDNN ISA unknown" in note for note in unknown.notes)
