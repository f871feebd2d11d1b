"""analyze_tensor: figures checked against an independent float64 rounding model (plain Python), not
against the code path under test; the museum's bounding-box case reproduced from constructed data."""

import importlib.util
import math
from pathlib import Path

import struct
import pytest
import torch

from training_profiler import analyze_tensor

MUSEUM = Path(__file__).resolve().parent.parent / "examples" / "failure_museum" / "tensors"


pytestmark = pytest.mark.usefixtures("one_thread")

# (explicit mantissa bits, smallest normal exponent, largest finite, saturates instead of inf)
SPEC = {
    "float16": (10, -14, 65504.0, False),
    "bfloat16": (7, -126, 3.3895313892515355e38, False),
    "float8_e4m3fn": (3, -6, 448.0, True),  # torch 2.13 CPU clamps to +-448 (see test below)
    "float8_e5m2": (2, -14, 57344.0, False),
}


def ref_round_one(x, fmt):
    """Round one float to ``fmt`` by arithmetic: scale to the integer grid of its binade, round half
    to even (Python's round), clamp or overflow at the top."""
    mant, emin, fmax, saturate = SPEC[fmt]
    if x == 0 or not math.isfinite(x):
        return math.copysign(fmax, x) if saturate and math.isinf(x) else x
    exp = max(math.frexp(x)[1] - 1, emin)  # floor(log2|x|), exactly; subnormals share emin's step
    step = 2.0 ** (exp - mant)
    r = round(x / step) * step
    return math.copysign(fmax if saturate else math.inf, x) if abs(r) > fmax else r


def ref_round(values, fmt):
    return [ref_round_one(float(v), fmt) for v in values]


def mean(flags):
    flags = list(flags)
    return sum(flags) / len(flags)


def ref_stats(values, fmt):
    """Overflow / underflow / subnormal fractions and normal-range relative error, from ref_round."""
    mant, emin, fmax, _ = SPEC[fmt]
    xs = [float(v) for v in values]
    rs = ref_round(xs, fmt)
    tiny = 2.0 ** emin
    top_half_step = 2.0 ** (math.floor(math.log2(fmax)) - mant) / 2
    over = [not math.isfinite(r) or abs(r - x) > top_half_step for x, r in zip(xs, rs)]
    rel = [abs(x - r) / abs(x) for x, r, o in zip(xs, rs, over) if abs(x) >= tiny and not o]
    return {
        "overflow": mean(over),
        "underflow": mean(x != 0 and r == 0 for x, r in zip(xs, rs)),
        "subnormal": mean(r != 0 and abs(r) < tiny and not o for r, o in zip(rs, over)),
        "mean_rel_error": sum(rel) / len(rel) if rel else None,
        "max_rel_error": max(rel) if rel else None,
    }


def load_museum(name):
    spec = importlib.util.spec_from_file_location(name, MUSEUM / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bbox():
    return load_museum("bbox_regression").bbox_predictions()


@pytest.fixture(scope="module")
def bbox_report(bbox):
    return analyze_tensor(bbox, name="bbox_pred")


def test_reference_rounding_agrees_with_torch_casts():
    gen = torch.Generator().manual_seed(3)
    values = torch.cat([torch.randn(20000, generator=gen) * 10.0 ** torch.randint(-9, 6, (20000,), generator=gen),
                        torch.tensor([65504.0, 65520.0, 6e-8, 3e-8, 2e-8, 448.0, 464.0, 465.0, 1e4, 61440.0])])
    for fmt, (_, _, _, _) in SPEC.items():
        got = values.to(getattr(torch, fmt)).double().tolist()
        assert got == ref_round(values.double().tolist(), fmt), fmt


def test_e4m3fn_cast_saturates_on_cpu():
    # the measured behaviour that "overflow" is defined around: no NaN, the value is clamped
    out = torch.tensor([447.0, 464.0, 465.0, 1000.0, math.inf, -1e9]).to(torch.float8_e4m3fn).float()
    assert out.tolist() == [448.0, 448.0, 448.0, 448.0, 448.0, -448.0]
    report = analyze_tensor(torch.tensor([447.0, 464.0, 465.0, 1000.0]))
    assert report.precision["float8_e4m3fn"]["overflow"] == 0.5  # 465 and 1000 land > 16 away from 448


def test_fp16_overflow_underflow_fractions_exact():
    x = torch.tensor([65504.0, 65520.0, 6e-8, 3e-8, 2e-8, 1.0])
    fp16 = analyze_tensor(x).precision["float16"]
    assert fp16["overflow"] == 1 / 6  # 65520 rounds to inf; 65504 is the largest finite value
    assert fp16["underflow"] == 1 / 6  # 2e-8 < 2**-25 rounds to 0
    assert fp16["subnormal"] == 2 / 6  # 6e-8 and 3e-8 both round to 2**-24 (3e-8 > 2**-25: not zero)
    assert fp16["mean_rel_error"] == 0.0 and fp16["max_rel_error"] == 0.0  # 65504 and 1.0 are exact
    assert fp16["max_finite"] == 65504.0 and fp16["unit_roundoff"] == 2.0**-11
    assert analyze_tensor(x).risk_level == "HIGH"
    assert "float16 range" in analyze_tensor(x).suggestion


def test_bbox_seed_case(bbox, bbox_report):
    r = bbox_report
    assert r.shape == [1000, 2] and r.dtype == "float32" and r.name == "bbox_pred"
    assert r.dim_stats[0]["min"] == -1000.0 and r.dim_stats[0]["max"] == 1200.0
    assert r.dim_stats[1]["min"] == -1.5 and r.dim_stats[1]["max"] == pytest.approx(0.8)
    assert r.dim_stats[0]["mean"] == pytest.approx(100.0, abs=1e-3)  # mean of linspace(-1000, 1200)
    assert r.dim_stats[1]["abs_max"] == 1.5 and r.dim_stats[0]["zeros"] == 0.0
    assert r.dim_ratio == {"ratio": 800.0, "large": 0, "small": 1, "measure": "abs_max"}
    assert r.risk_level == "HIGH"
    assert r.suggestion.startswith("dimension 1 is 800x smaller than dimension 0")
    assert "keep this reduction in fp32 or normalise dimension 0" in r.suggestion
    # the research figures (16.8% in fp16, 78.3% in bf16) within sampling noise of 1000 rows
    pair = r.reduction_risk["pairwise"]
    assert abs(pair["float16"]["lost_rows"] - 0.168) < 0.03
    assert abs(pair["bfloat16"]["lost_rows"] - 0.783) < 0.03


def test_bbox_absorption_against_float64_reference(bbox, bbox_report):
    a, b = bbox[:, 0].tolist(), bbox[:, 1].tolist()
    pair = bbox_report.reduction_risk["pairwise"]
    for fmt in ("float16", "bfloat16"):
        ra, rb = ref_round(a, fmt), ref_round(b, fmt)
        kept = [ref_round_one(x + y, fmt) - x for x, y in zip(ra, rb)]
        assert pair[fmt]["lost_rows"] == mean(k == 0 for k in kept)
        absorbed = sum(abs(k - y) for k, y in zip(kept, b)) / sum(abs(y) for y in b)
        assert pair[fmt]["absorbed"] == pytest.approx(absorbed, rel=1e-12)
    assert pair["float16"]["lost_rows"] == 0.158 and pair["bfloat16"]["lost_rows"] == 0.793


def test_bbox_precision_against_float64_reference(bbox, bbox_report):
    values = bbox.double().flatten().tolist()
    for fmt in SPEC:
        got, want = bbox_report.precision[fmt], ref_stats(values, fmt)
        for key in ("overflow", "underflow", "subnormal"):
            assert got[key] == pytest.approx(want[key], abs=1e-15), (fmt, key)
        for key in ("mean_rel_error", "max_rel_error"):
            assert got[key] == pytest.approx(want[key], rel=1e-9), (fmt, key)
    e4m3 = bbox_report.precision["float8_e4m3fn"]
    assert e4m3["overflow"] == mean(abs(v) > 464 for v in values)  # clamped by more than half a step
    assert bbox_report.precision["float16"]["max_rel_error"] <= 2.0**-11


def test_fp8_one_scale_underflows_small_column_per_column_scales_fix_it(bbox):
    gen = torch.Generator().manual_seed(0)
    tensor = torch.cat([bbox, torch.randn(1000, 1, generator=gen) * 0.01], dim=1)
    e4m3 = analyze_tensor(tensor).precision["float8_e4m3fn"]
    columns = tensor.t().tolist()
    one_scale = torch.tensor(448.0 / max(abs(v) for col in columns for v in col), dtype=torch.float32)
    # independent: scale in float32 as the analyser documents, round with the reference model
    small = (tensor[:, 2] * one_scale).tolist()
    under_one = mean(x != 0 and ref_round_one(v, "float8_e4m3fn") == 0 for x, v in zip(columns[2], small))
    assert e4m3["scaled_per_tensor"]["column_underflow"][2] == under_one
    assert 0.15 < under_one < 0.25  # research: 20.5%
    assert e4m3["per_column_helps"] is True
    for c, col in enumerate(columns):
        scale = torch.tensor(448.0 / max(abs(v) for v in col), dtype=torch.float32)
        scaled = (tensor[:, c] * scale).tolist()
        ref_err = ref_stats(scaled, "float8_e4m3fn")["mean_rel_error"]
        got = e4m3["scaled_per_column"]["column_mean_rel_error"][c]
        assert got == pytest.approx(ref_err, rel=1e-9)
        assert 0.018 < got < 0.028  # research: about 2.3% for every column
        assert e4m3["scaled_per_column"]["column_underflow"][c] == 0.0
    reasons = [x["text"] for x in analyze_tensor(tensor).reasons]
    assert any("of dimension 2 flushes to zero: use per-column fp8 scales" in t for t in reasons)


def test_running_fp16_sum_of_0_01_stalls_at_32():
    run = analyze_tensor(torch.full((10000,), 0.01)).reduction_risk["running_sum"]
    fp16 = run["float16"]
    assert fp16["reaches"] == 32.0 and fp16["exact"] == pytest.approx(100.0)
    # independent: IEEE half rounding by Python's struct module, step by step
    def half(v):
        return struct.unpack("e", struct.pack("e", v))[0]

    total, steps = 0.0, 0
    while half(total + half(0.01)) != total:
        total, steps = half(total + half(0.01)), steps + 1
    assert fp16["stalls_after"] == steps and float(total) == 32.0
    assert run["bfloat16"]["reaches"] == 4.0  # bf16 keeps 8 bits: 0.01 is below half a step at 4


def test_dims_argument_and_1d_tensor():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # x[i, c, j] = 12 i + 4 c + j
    r = analyze_tensor(x, dims=1)
    assert r.dims == [1] and len(r.dim_stats) == 3
    assert [(s["min"], s["max"]) for s in r.dim_stats] == [(0, 15), (4, 19), (8, 23)]
    assert r.dim_stats[0]["zeros"] == 1 / 8 and r.dim_stats[1]["mean"] == 11.5
    assert len(analyze_tensor(x, dims=(0, 2)).dim_stats) == 8
    assert analyze_tensor(torch.ones(5)).dim_ratio is None  # one feature: no ratio


def test_large_tensor_is_sampled_deterministically_but_ranges_are_exact():
    x = torch.randn(400_000, 5, generator=torch.Generator().manual_seed(0))
    x[123_457, 3] = 5e4  # an outlier the range statistics must see even if the sample misses it
    r1 = analyze_tensor(x, max_elements=50_000)
    r2 = analyze_tensor(x, max_elements=50_000)
    assert r1.sample == {"elements": 50_000, "rows": 10_000, "of_elements": 2_000_000, "nonfinite": 0.0}
    assert r1.dim_stats[3]["max"] == 5e4
    assert r1.precision == r2.precision


def test_nonfinite_values_are_counted_and_excluded():
    r = analyze_tensor(torch.tensor([[1.0, math.nan], [2.0, 3.0], [math.inf, 4.0], [5.0, 6.0]]))
    assert r.sample["nonfinite"] == 0.25
    assert r.dim_stats[0]["max"] == 5.0 and r.dim_stats[1]["min"] == 3.0
    assert r.precision["float16"]["overflow"] == 0.0


def test_low_risk_tensor_and_readable_text(bbox_report):
    r = analyze_tensor(torch.linspace(0.5, 1.0, 64).reshape(16, 4))
    assert r.risk_level == "LOW"
    assert "no measured risk" in r.suggestion
    text = str(bbox_report)
    assert text.splitlines()[1].startswith("risk HIGH: dimension 1 is 800x smaller")
    assert "largest ratio: dimension 0 / dimension 1 = 800x" in text
    assert "float8_e4m3fn" in text and "per-column scales" in text


@pytest.mark.parametrize("bad, kwargs, error, words", [
    ([1.0, 2.0], {}, TypeError, "needs a torch.Tensor"),
    (torch.arange(4), {}, TypeError, "cast it with .float()"),
    (torch.empty(0, 3), {}, ValueError, "empty tensor"),
    (torch.ones(2, 3), {"dims": 2}, ValueError, "dims=2 is out of range"),
    (torch.ones(2, 3), {"max_elements": 0}, ValueError, "max_elements=0"),
])
def test_bad_input_gets_a_clear_error(bad, kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        analyze_tensor(bad, **kwargs)


def test_tiny_values_are_blamed_on_fp16_subnormals_not_on_a_dimension_gap():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e-6
    r = analyze_tensor(x)
    want = ref_stats(x.flatten().tolist(), "float16")
    assert r.precision["float16"]["subnormal"] == want["subnormal"] > 0.9
    assert r.risk_level == "MEDIUM"
    texts = [t["text"] for t in r.reasons]
    assert any("float16 subnormals (below 6.1e-05)" in t for t in texts)
    assert not any("smaller than dimension" in t for t in texts)  # ratio < 10: not "big eats small"


def test_report_is_a_record_with_plain_json_data_and_scalars_work(bbox_report):
    import json

    from training_profiler.runtime.precision import TensorReport

    data = bbox_report.to_dict()
    assert list(data) == ["name", "shape", "dtype", "dims", "sample", "dim_stats", "dim_ratio", "precision",
                          "reduction_risk", "reasons", "risk_level", "suggestion"]
    assert json.loads(json.dumps(data))["dim_ratio"]["ratio"] == 800.0
    assert TensorReport(**data) == bbox_report  # the record round-trips through its plain data
    scalar = analyze_tensor(torch.tensor(3.0))
    assert scalar.shape == [] and scalar.risk_level == "LOW" and len(scalar.dim_stats) == 1
    with pytest.raises(ValueError, match="0-d tensor, which has no dimensions"):
        analyze_tensor(torch.tensor(3.0), dims=0)


def test_nan_input_and_fp16_overflowing_large_column_are_high_risk():
    assert analyze_tensor(torch.full((3, 2), math.nan)).risk_level == "HIGH"
    x = torch.stack([torch.linspace(1e5, 2e5, 100), torch.linspace(0.5, 1.0, 100)], dim=1)
    r = analyze_tensor(x)
    pair = r.reduction_risk["pairwise"]
    assert r.precision["float16"]["overflow"] == 0.5  # column 0 is all beyond 65504
    assert pair["float16"]["lost_rows"] is None and pair["float16"]["absorbed"] is None  # no finite row left
    assert pair["bfloat16"]["lost_rows"] == 1.0  # bf16 spacing near 1e5 is 512: 0.5..1 vanishes
    assert r.suggestion.startswith("50.00% of values exceed the float16 range")
