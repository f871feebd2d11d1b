"""Measured precision loss: `analyze_tensor` (one tensor in fp16 / bf16 / fp8) and
`compare_precision` (a model's layers in fp32 versus autocast).

Everything here is measured by casting real values and comparing them in float64; closed-form
figures (unit roundoff, format limits) are only reported next to the measurements.

What "overflow" means: an element overflows when its round trip is not finite (fp16, bf16 and
e5m2 give inf) or lands further from the value than half a step of the format's top binade, i.e.
it was clamped. torch 2.13 on CPU casts to float8_e4m3fn with saturation: 1000, and even inf,
become 448 (only NaN stays NaN), so for e4m3fn an overflow shows up as a clamped value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..inputs import split_inputs as _split_inputs
from ..inputs import tensors as _tensors

__all__ = [
    "FORMATS",
    "LayerError",
    "ModelRunError",
    "PrecisionComparison",
    "TensorReport",
    "analyze_tensor",
    "compare_precision",
]

# the low-precision formats analyze_tensor measures, by the name torch gives them
FORMATS: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}
_REDUCTION_FORMATS = ("float16", "bfloat16")  # fp8 is a storage/GEMM-input format: sums run wider
_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp8": "float8_e4m3fn",
            "e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}
_CHUNK = 1 << 22  # elements per chunk for full-tensor passes (bounds temporary memory)
_RISK_ORDER = {"LOW": 0, "MEDIUM": 1, "HIGH": 2}
_EATS_RATIO = 10.0  # dimension ratio from which lost sums are blamed on the gap between dimensions


def _dtype(value: Any) -> torch.dtype:
    """A torch dtype from a dtype or a name such as 'bf16', 'float16', 'float8_e4m3fn'."""
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        name = _ALIASES.get(value.strip().lower(), value.strip().lower())
        if name in FORMATS:
            return FORMATS[name]
    names = ", ".join([*FORMATS, *_ALIASES])
    raise ValueError(f"unknown low-precision dtype {value!r}: use a torch dtype or one of {names}")


def _format_limits(dtype: torch.dtype) -> tuple[float, float, float]:
    """(largest finite value, smallest normal, half a step of the top binade) of ``dtype``."""
    info = torch.finfo(dtype)
    top_half_step = 2.0 ** math.floor(math.log2(info.max)) * info.eps / 2
    return float(info.max), float(info.tiny), top_half_step


def _round_trip(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).to(torch.float64)


# --------------------------------------------------------------------------------------------
# analyze_tensor


@dataclass
class TensorReport:
    """The result of :func:`analyze_tensor`; ``str()`` gives a readable report, ``to_dict()`` plain data.

    ``precision`` maps each format of :data:`FORMATS` to its measured round trip (mean_rel_error,
    max_rel_error, overflow, underflow, subnormal fractions, format limits; for fp8 also
    ``scaled_per_tensor`` / ``scaled_per_column``); ``dim_stats`` has one dict per feature index
    (min, max, mean, abs_max, zeros); ``reasons`` is every measured risk, worst first, as
    ``{"level", "text"}``, and ``risk_level`` / ``suggestion`` the worst of them.
    """

    name: str | None
    shape: list[int]
    dtype: str
    dims: list[int]  # the feature dimension(s)
    sample: dict[str, Any]  # elements, rows, of_elements (whole tensor), nonfinite fraction
    dim_stats: list[dict[str, Any]]
    dim_ratio: dict[str, Any] | None  # largest abs-max ratio between two features (ratio, large, small)
    precision: dict[str, dict[str, Any]]
    reduction_risk: dict[str, Any]  # pairwise (small feature added to large) and running_sum per format
    reasons: list[dict[str, str]]
    risk_level: str  # LOW | MEDIUM | HIGH
    suggestion: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return _render_tensor_report(self)

    def pretty(self) -> None:
        print(self)


def analyze_tensor(tensor: torch.Tensor, name: str | None = None, dims: int | Sequence[int] | None = None,
                   *, max_elements: int = 1 << 20, seed: int = 0) -> TensorReport:
    """Measure how ``tensor`` survives float16, bfloat16 and the two fp8 formats.

    ``dims``: the feature dimension(s) whose indices get per-index statistics (default: the last
    dimension; a 1-D tensor is one feature; several dims are flattened, row-major, into one index). Range statistics (``dim_stats``) cover every element;
    the precision figures use at most ``max_elements`` elements, whole rows drawn with a seeded
    generator, and ``sample`` says how many.
    """
    rows = _as_rows(tensor, dims)
    n_rows, n_cols = rows.shape
    dim_stats = _dim_stats(rows)
    sample = _sample_rows(rows, max_elements, seed)
    if sample.device.type == "mps":  # no float64 there; the sample is small, measure it on the CPU
        sample = sample.cpu()
    x = sample.to(torch.float64)
    finite = torch.isfinite(x)

    col_absmax = torch.tensor([s["abs_max"] for s in dim_stats], dtype=torch.float64)
    precision = {fmt: _precision_entry(sample, x, finite, FORMATS[fmt], col_absmax) for fmt in FORMATS}
    ratio = _dim_ratio(dim_stats)
    reduction = _reduction_risk(sample, x, ratio, n_rows)

    sample_info = {"elements": sample.numel(), "rows": sample.shape[0], "of_elements": tensor.numel(),
                   "nonfinite": _fraction(~finite)}
    reasons = _risk_reasons(precision, reduction, ratio, sample_info["nonfinite"])
    return TensorReport(
        name=name,
        shape=list(tensor.shape),
        dtype=str(tensor.dtype).replace("torch.", ""),
        dims=list(_feature_dims(tensor, dims)),
        sample=sample_info,
        dim_stats=dim_stats,
        dim_ratio=ratio,
        precision=precision,
        reduction_risk=reduction,
        reasons=[{"level": level, "text": text} for level, text in reasons],
        risk_level=reasons[0][0],
        suggestion=reasons[0][1],
    )


def _feature_dims(tensor: torch.Tensor, dims: int | Sequence[int] | None) -> tuple[int, ...]:
    if dims is None:
        return (tensor.dim() - 1,) if tensor.dim() >= 2 else ()
    if tensor.dim() == 0:
        raise ValueError(f"dims={dims!r} given for a 0-d tensor, which has no dimensions: leave dims=None")
    wanted = (dims,) if isinstance(dims, int) else tuple(dims)
    out = []
    for d in wanted:
        if not isinstance(d, int) or not -tensor.dim() <= d < tensor.dim():
            raise ValueError(f"dims={dims!r} is out of range for a tensor with {tensor.dim()} dimensions: "
                             f"pass dimensions in [{-tensor.dim()}, {tensor.dim() - 1}]")
        out.append(d % tensor.dim())
    if len(set(out)) != len(out):
        raise ValueError(f"dims={dims!r} names a dimension twice: pass each dimension once")
    return tuple(out)


def _as_rows(tensor: Any, dims: int | Sequence[int] | None) -> torch.Tensor:
    """``tensor`` as a 2-D (rows, features) view/copy with the feature dims last, flattened."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"analyze_tensor needs a torch.Tensor, got {type(tensor).__name__}: "
                        "pass torch.as_tensor(value)")
    if not tensor.is_floating_point():
        raise TypeError(f"analyze_tensor needs a floating-point tensor, got {tensor.dtype}: "
                        "cast it with .float() first")
    if tensor.numel() == 0:
        raise ValueError(f"analyze_tensor got an empty tensor of shape {tuple(tensor.shape)}: pass one with values")
    feat = _feature_dims(tensor, dims)
    t = tensor.detach()
    rest = [d for d in range(t.dim()) if d not in feat]
    if t.dim():
        t = t.permute(*rest, *feat)
    n_cols = math.prod(tensor.shape[d] for d in feat)
    return t.reshape(-1, n_cols)


def _dim_stats(rows: torch.Tensor) -> list[dict[str, Any]]:
    """Exact per-feature min/max/mean/abs-max/zero fraction over every row, in bounded chunks."""
    n_rows, n_cols = rows.shape
    step = max(1, _CHUNK // n_cols)
    lo = torch.full((n_cols,), math.inf, dtype=torch.float64)
    hi = torch.full((n_cols,), -math.inf, dtype=torch.float64)
    total = torch.zeros(n_cols, dtype=torch.float64)
    zeros = torch.zeros(n_cols, dtype=torch.int64)
    finite = torch.zeros(n_cols, dtype=torch.int64)
    for start in range(0, n_rows, step):
        # plain per-chunk reductions are the fast ones on CPU (aminmax, bool sums and float64 sums
        # along dim 0 were 2-10x slower); a chunk holds < 2**24 rows, so float32 counts are exact
        chunk = rows[start:start + step]
        c_lo, c_hi, c_total = chunk.amin(0), chunk.amax(0), chunk.float().sum(0)
        if bool(torch.isfinite(c_lo).all() & torch.isfinite(c_hi).all()):
            finite += chunk.shape[0]
        else:  # NaN/inf somewhere in this chunk: redo it over the finite values only
            ok = torch.isfinite(chunk)
            c_lo = torch.where(ok, chunk, math.inf).amin(0)
            c_hi = torch.where(ok, chunk, -math.inf).amax(0)
            c_total = torch.where(ok, chunk, 0.0).float().sum(0)
            finite += ok.sum(0).cpu()
        lo = torch.minimum(lo, c_lo.double().cpu())
        hi = torch.maximum(hi, c_hi.double().cpu())
        total += c_total.double().cpu()
        zeros += (chunk == 0).float().sum(0).long().cpu()
    stats = []
    for i in range(n_cols):
        n_ok = int(finite[i])
        stats.append({
            "index": i,
            "min": float(lo[i]) if n_ok else math.nan,
            "max": float(hi[i]) if n_ok else math.nan,
            "mean": float(total[i]) / n_ok if n_ok else math.nan,
            "abs_max": max(abs(float(lo[i])), abs(float(hi[i]))) if n_ok else math.nan,
            "zeros": int(zeros[i]) / n_rows,
        })
    return stats


def _sample_rows(rows: torch.Tensor, max_elements: int, seed: int) -> torch.Tensor:
    if not isinstance(max_elements, int) or max_elements < 1:
        raise ValueError(f"max_elements={max_elements!r} must be a positive integer")
    n_rows, n_cols = rows.shape
    keep = max(1, max_elements // n_cols)
    if keep >= n_rows:
        return rows
    # stratified: one seeded random row from each of ``keep`` equal stretches (no repeats, covers
    # the whole tensor, O(keep) memory; randperm over 100M rows alone took seconds)
    gen = torch.Generator().manual_seed(seed)
    edges = torch.arange(keep + 1, dtype=torch.int64) * n_rows // keep
    offsets = (torch.rand(keep, generator=gen, dtype=torch.float64) * (edges[1:] - edges[:-1])).long()
    return rows[(edges[:-1] + offsets).to(rows.device)]


def _fraction(mask: torch.Tensor) -> float:
    return float(mask.sum()) / max(mask.numel(), 1)


def _cast_stats(x: torch.Tensor, y: torch.Tensor, finite: torch.Tensor, dtype: torch.dtype,
                per_column: bool = False) -> dict[str, Any]:
    """Overflow/underflow/subnormal fractions and normal-range relative error of ``x`` -> ``y``."""
    fmax, tiny, top_half_step = _format_limits(dtype)
    err = (x - y).abs()
    overflow = finite & (~torch.isfinite(y) | (err > top_half_step))
    underflow = finite & (x != 0) & (y == 0)
    subnormal = finite & (y != 0) & (y.abs() < tiny) & ~overflow
    normal = finite & (x.abs() >= tiny) & ~overflow
    rel = torch.where(normal, err / x.abs().clamp_min(tiny), torch.zeros((), dtype=x.dtype, device=x.device))
    n_normal = int(normal.sum())
    out = {
        "mean_rel_error": float(rel.sum()) / n_normal if n_normal else None,
        "max_rel_error": float(rel.max()) if n_normal else None,
        "overflow": _fraction(overflow),
        "underflow": _fraction(underflow),
        "subnormal": _fraction(subnormal),
    }
    if per_column:
        count = normal.sum(0).clamp_min(1)
        out["column_mean_rel_error"] = (rel.sum(0) / count).tolist()
        out["column_underflow"] = (underflow.sum(0).double() / x.shape[0]).tolist()
        out["column_subnormal"] = (subnormal.sum(0).double() / x.shape[0]).tolist()
    return out


def _precision_entry(sample: torch.Tensor, x: torch.Tensor, finite: torch.Tensor, dtype: torch.dtype,
                     col_absmax: torch.Tensor) -> dict[str, Any]:
    fmax, tiny, _ = _format_limits(dtype)
    entry = _cast_stats(x, _round_trip(sample, dtype), finite, dtype)
    entry["unit_roundoff"] = torch.finfo(dtype).eps / 2  # closed form: max relative error, normal range
    entry["max_finite"] = fmax
    entry["smallest_normal"] = tiny
    if dtype.itemsize == 1:  # fp8 is used with scales: one for the tensor, or one per column
        safe = torch.where(torch.isfinite(col_absmax) & (col_absmax > 0), col_absmax, torch.ones_like(col_absmax))
        tensor_scale = fmax / float(safe.max())
        per_tensor = _scaled_stats(sample, x, finite, dtype, torch.full_like(safe, tensor_scale))
        per_column = _scaled_stats(sample, x, finite, dtype, fmax / safe)

        def worst_loss(stats: Mapping[str, Any]) -> float:
            return max(u + s for u, s in zip(stats["column_underflow"], stats["column_subnormal"]))

        entry["scaled_per_tensor"] = per_tensor
        entry["scaled_per_column"] = per_column
        # per-column scales "help" when they rescue at least 1% of the worst column's values
        entry["per_column_helps"] = worst_loss(per_tensor) - worst_loss(per_column) >= 0.01
    return entry


def _scaled_stats(sample: torch.Tensor, x: torch.Tensor, finite: torch.Tensor, dtype: torch.dtype,
                  scales: torch.Tensor) -> dict[str, Any]:
    """Cast ``sample * scale`` (in float32, as fp8 recipes do) and measure in the scaled units."""
    s = scales.to(sample.device)
    scaled = sample.float() * s.float()
    stats = _cast_stats(scaled.double(), _round_trip(scaled, dtype), finite, dtype, per_column=True)
    stats["scales"] = s.tolist()
    return stats


def _dim_ratio(dim_stats: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The largest abs-max ratio between two features (features that are all zero do not count)."""
    usable = [s for s in dim_stats if math.isfinite(s["abs_max"]) and s["abs_max"] > 0]
    if len(usable) < 2:
        return None
    large = max(usable, key=lambda s: s["abs_max"])
    small = min(usable, key=lambda s: s["abs_max"])
    return {"ratio": large["abs_max"] / small["abs_max"], "large": large["index"], "small": small["index"],
            "measure": "abs_max"}


def _reduction_risk(sample: torch.Tensor, x: torch.Tensor, ratio: Mapping[str, Any] | None,
                    n_rows: int) -> dict[str, Any]:
    """How much of the small feature survives being added to the large one, and how far a running
    low-precision sum of this tensor's values gets before it stops growing."""
    out: dict[str, Any] = {"pairwise": None, "running_sum": {}}
    finite_x = x[torch.isfinite(x)]
    if ratio is not None:
        large, small = sample[:, ratio["large"]], sample[:, ratio["small"]]
        exact_small = x[:, ratio["small"]]
        ok = torch.isfinite(x[:, ratio["large"]]) & torch.isfinite(exact_small) & (exact_small != 0)
        pair: dict[str, Any] = {"large": ratio["large"], "small": ratio["small"], "rows": int(ok.sum())}
        for fmt in _REDUCTION_FORMATS:
            a, b = _round_trip(large, FORMATS[fmt]), _round_trip(small, FORMATS[fmt])
            total = _round_trip((a + b).float(), FORMATS[fmt])
            kept = total - a  # what the small feature actually added, against its exact float64 value
            lost = (kept - exact_small).abs()
            valid = ok & torch.isfinite(total)  # rows that overflow are counted as overflow, not here
            n_valid = int(valid.sum())
            pair[fmt] = {  # None when no row stays finite in this format
                "lost_rows": float(((kept == 0) & valid).sum()) / n_valid if n_valid else None,
                "absorbed": float(lost[valid].sum()) / float(exact_small[valid].abs().sum()) if n_valid else None,
            }
        out["pairwise"] = pair
    if finite_x.numel():
        term = float(finite_x.abs().mean())
        for fmt in _REDUCTION_FORMATS:
            out["running_sum"][fmt] = _running_sum(term, n_rows, FORMATS[fmt])
    return out


def _running_sum(term: float, terms: int, dtype: torch.dtype) -> dict[str, Any]:
    """Add ``term`` to a ``dtype`` accumulator ``terms`` times, step by step, stopping when the
    total stalls or overflows (e.g. 10000 x 0.01 in float16 stalls at 32). A low-precision total
    stalls within about 2**(mantissa bits + 2) steps, so the loop is short."""
    step_value = torch.tensor(term, dtype=torch.float64).to(dtype).item()
    total = torch.zeros((), dtype=dtype)
    result = {"term": term, "terms": terms, "exact": term * terms, "stalls_after": None, "overflows_after": None}
    for done in range(terms):
        nxt = total + step_value  # rounded to ``dtype`` like an accumulator of that dtype
        if not torch.isfinite(nxt):
            result["overflows_after"] = done
            break
        if nxt == total:
            result["stalls_after"] = done
            break
        total = nxt
    result["reaches"] = total.item()
    return result


def _risk_reasons(prec: Mapping[str, Any], red: Mapping[str, Any], ratio: Mapping[str, Any] | None,
                  nonfinite: float) -> list[tuple[str, str]]:
    """(level, one actionable sentence) for every measured risk, worst first; LOW when none."""
    reasons: list[tuple[str, str]] = []
    fp16, bf16 = prec["float16"], prec["bfloat16"]
    if nonfinite > 0:
        reasons.append(("HIGH", f"{nonfinite:.2%} of the values are already NaN or inf: find where they come "
                                "from before choosing a precision"))
    if bf16["overflow"] > 0:
        reasons.append(("HIGH", f"{bf16['overflow']:.2%} of values overflow even bfloat16: keep this tensor "
                                "in fp32 and find where the values explode"))
    elif fp16["overflow"] > 0:
        reasons.append(("HIGH", f"{fp16['overflow']:.2%} of values exceed the float16 range (+-65504): use "
                                "bfloat16 autocast or rescale the tensor"))
    pair = red["pairwise"]
    if pair is not None:
        worst = max(_REDUCTION_FORMATS, key=lambda f: pair[f]["lost_rows"] or 0.0)
        lost = pair[worst]["lost_rows"] or 0.0
        # only a magnitude gap makes this "big eats small"; without one it is plain rounding
        if lost >= 0.01 and ratio["ratio"] >= _EATS_RATIO:
            reasons.append(("HIGH" if lost >= 0.1 else "MEDIUM",
                            f"dimension {pair['small']} is {ratio['ratio']:.0f}x smaller than dimension "
                            f"{pair['large']} (adding them in {worst} loses it entirely in {lost:.1%} of rows): "
                            f"keep this reduction in fp32 or normalise dimension {pair['large']}"))
    if fp16["underflow"] >= 0.01:
        reasons.append(("HIGH" if fp16["underflow"] >= 0.1 else "MEDIUM",
                        f"{fp16['underflow']:.1%} of values flush to zero in float16: use bfloat16 or scale "
                        "the values up (loss scaling for gradients)"))
    if fp16["subnormal"] >= 0.1:
        reasons.append(("MEDIUM", f"{fp16['subnormal']:.1%} of values are float16 subnormals (below "
                                  f"{fp16['smallest_normal']:.3g}) and keep only a few bits: use bfloat16 or "
                                  "scale the values up"))
    # running sums only matter for accumulators kept in low precision (torch's own reductions
    # accumulate in fp32), so they are reported as LOW: worth knowing, not a verdict on the tensor
    for fmt in _REDUCTION_FORMATS:
        run = red["running_sum"].get(fmt)
        if run and run["stalls_after"] is not None:
            reasons.append(("LOW", f"a running {fmt} total of {run['terms']} terms like these stops growing at "
                                   f"{run['reaches']:g} after {run['stalls_after']} terms (exact: {run['exact']:.4g}): "
                                   "keep accumulators in fp32"))
        elif run and run["overflows_after"] is not None:
            reasons.append(("LOW", f"a running {fmt} total of {run['terms']} terms like these overflows after "
                                   f"{run['overflows_after']} terms: keep accumulators in fp32"))
    e4m3 = prec["float8_e4m3fn"]
    tensor_underflow = e4m3["scaled_per_tensor"]["column_underflow"]
    worst_col = max(range(len(tensor_underflow)), key=tensor_underflow.__getitem__)
    if e4m3["per_column_helps"] and tensor_underflow[worst_col] >= 0.05:
        reasons.append(("MEDIUM", f"with one fp8 (e4m3) scale for the whole tensor {tensor_underflow[worst_col]:.1%} "
                                  f"of dimension {worst_col} flushes to zero: use per-column fp8 scales"))
    if not reasons:
        reasons.append(("LOW", f"no measured risk in float16 or bfloat16 (worst round-trip error "
                               f"{max(fp16['max_rel_error'] or 0, bf16['max_rel_error'] or 0):.2%}, no overflow, "
                               "underflow below 1%): this tensor is safe under autocast"))
    return sorted(reasons, key=lambda r: -_RISK_ORDER[r[0]])


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (abs(v) >= 1e5 or (0 < abs(v) < 1e-3)):
        return f"{v:.3g}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.3%}" if 0 < v < 0.001 else f"{v:.1%}"


def _render_tensor_report(r: TensorReport) -> str:
    s = r.sample
    lines = [f"analyze_tensor: {r.name or '<tensor>'}  shape {tuple(r.shape)}  {r.dtype}  "
             f"(precision measured on {s['elements']:,} of {s['of_elements']:,} elements)",
             f"risk {r.risk_level}: {r.suggestion}"]
    lines += [f"  also {x['level']}: {x['text']}" for x in r.reasons[1:]]
    lines.append(f"\n{'dimension':>9} {'min':>11} {'max':>11} {'mean':>11} {'abs-max':>11} {'zeros':>7}")
    ratio = r.dim_ratio
    shown = {0, 1, 2, 3, 4, 5, len(r.dim_stats) - 1} | ({ratio["large"], ratio["small"]} if ratio else set())
    for st in r.dim_stats:
        if st["index"] in shown:
            lines.append(f"{st['index']:>9} {_num(st['min']):>11} {_num(st['max']):>11} {_num(st['mean']):>11} "
                         f"{_num(st['abs_max']):>11} {_pct(st['zeros']):>7}")
    if len(r.dim_stats) > len(shown):
        lines.append(f"{'...':>9} ({len(r.dim_stats)} dimensions in all)")
    if ratio:
        lines.append(f"largest ratio: dimension {ratio['large']} / dimension {ratio['small']} = "
                     f"{ratio['ratio']:.4g}x (abs-max)")
    lines.append(f"\n{'format':<22} {'mean err':>9} {'max err':>9} {'overflow':>9} {'underflow':>10} {'subnormal':>10}")
    for fmt, p in r.precision.items():
        rows = [(fmt, p)]
        if "scaled_per_tensor" in p:
            rows += [("  one scale", p["scaled_per_tensor"]), ("  per-column scales", p["scaled_per_column"])]
        for label, q in rows:
            lines.append(f"{label:<22} {_pct(q['mean_rel_error']):>9} {_pct(q['max_rel_error']):>9} "
                         f"{_pct(q['overflow']):>9} {_pct(q['underflow']):>10} {_pct(q['subnormal']):>10}")
    red = r.reduction_risk
    if red["pairwise"]:
        pair = red["pairwise"]
        lines.append(f"\nadding dimension {pair['small']} to dimension {pair['large']}:")
        for fmt in _REDUCTION_FORMATS:
            if pair[fmt]["lost_rows"] is None:
                lines.append(f"  {fmt:<9} no row stays finite")
                continue
            lines.append(f"  {fmt:<9} lost entirely in {_pct(pair[fmt]['lost_rows'])} of rows, "
                         f"{_pct(pair[fmt]['absorbed'])} of its total contribution absorbed")
    for fmt, run in red["running_sum"].items():
        if run["stalls_after"] is not None:
            what = f"stalls at {run['reaches']:g} after {run['stalls_after']} terms"
        elif run["overflows_after"] is not None:
            what = f"overflows after {run['overflows_after']} terms"
        else:
            what = f"reaches {run['reaches']:g}"
        lines.append(f"running {fmt} sum of {run['terms']} terms of {run['term']:.3g}: {what} "
                     f"(exact {run['exact']:.4g})")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# compare_precision


@dataclass
class LayerError:
    """One module call compared between the fp32 run and the low-precision run."""

    name: str  # qualified module name; "" is the whole model; "name (call 2)" for a re-used module
    type: str
    rel_error: float  # ||low - fp32|| / ||fp32|| over the call's floating outputs (inf if low overflowed)
    cosine: float  # cosine similarity of the two outputs
    input_rel_error: float | None  # the same measure on the call's floating inputs
    gain: float | None  # rel_error / input_rel_error: how much this layer amplifies incoming error
    nonfinite: int  # elements that are inf/NaN in the low-precision output but finite in fp32

    @property
    def label(self) -> str:
        return self.name or "(model output)"


@dataclass
class PrecisionComparison:
    """The result of :func:`compare_precision`; ``str()`` gives a table, ``to_dict()`` plain data."""

    dtype: str
    device_type: str
    tolerance: float
    layers: list[LayerError]
    first_exceeding: str | None  # first layer (in execution order) whose rel_error > tolerance
    most_amplifying: list[str]  # layers with the largest gain, worst first
    output_rel_error: float
    rounds: int  # fp32/low-precision pass pairs needed to stay within the memory budget
    peak_stored_bytes: int  # the most fp32 reference bytes held at once
    gradients: list[LayerError] = field(default_factory=list)  # per module, with gradients=True

    def layer(self, name: str) -> LayerError:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(f"no layer named {name!r} in this comparison")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"compare_precision: fp32 vs {self.dtype} autocast on {self.device_type}, tolerance "
                 f"{self.tolerance:.3g} (relative L2 error), {len(self.layers)} layer calls, "
                 f"{self.rounds} round{'s' if self.rounds != 1 else ''}"]
        width = max([len(e.label) for e in self.layers] + [5])
        lines.append(f"{'layer':<{width}}  {'type':<16} {'rel err':>9} {'cosine':>9} {'in err':>9} {'gain':>7}")
        for e in self.layers:
            flag = "  <-- first over tolerance" if e.name == self.first_exceeding else ""
            gain = "-" if e.gain is None else f"{e.gain:.3g}"
            in_err = "-" if e.input_rel_error is None else f"{e.input_rel_error:.3g}"
            lines.append(f"{e.label:<{width}}  {e.type[:16]:<16} {e.rel_error:>9.3g} {e.cosine:>9.6f} "
                         f"{in_err:>9} {gain:>7}{flag}")
        if self.gradients:
            lines.append(f"\n{'parameter gradients':<{width}}  {'':<16} {'rel err':>9} {'cosine':>9}")
            for e in self.gradients:
                lines.append(f"{e.label:<{width}}  {'':<16} {e.rel_error:>9.3g} {e.cosine:>9.6f}")
        first = self.first_exceeding
        label = "none" if first is None else self.layer(first).label
        lines.append(f"first layer over tolerance: {label}")
        if self.most_amplifying:
            lines.append(f"most amplifying: {', '.join(self.most_amplifying)}")
        lines.append(f"model output error: {self.output_rel_error:.3g}")
        return "\n".join(lines) + "\n"


_DEFAULT_TOLERANCE = {torch.float16: 0.01, torch.bfloat16: 0.05}


def compare_precision(model: torch.nn.Module, inputs: Any, dtype: torch.dtype | str = torch.bfloat16,
                      device_type: str | None = None, *, tolerance: float | None = None, top: int = 3,
                      memory_budget: int = 1 << 30, gradients: bool = False,
                      loss_fn: Callable[[Any], torch.Tensor] | None = None) -> PrecisionComparison:
    """Run ``model`` in fp32 and under ``torch.autocast(device_type, dtype)`` on the same inputs and
    weights, and compare every module call's output.

    ``inputs``: a tensor, a tuple of positional arguments, or a dict of keyword arguments.
    Memory: the fp32 run keeps copies of module inputs/outputs only up to ``memory_budget`` bytes;
    the low-precision run compares and frees them as it goes. When a model's activations do not fit,
    the two runs are repeated for the next stretch of layers ("rounds"), so memory stays bounded.
    The model runs in eval mode under ``torch.no_grad()`` (its mode is restored afterwards).
    ``gradients=True`` also compares each module's parameter gradients of ``loss_fn(output)``
    (default: a fixed random projection of the outputs), holding one fp32 set of gradients.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"compare_precision needs a torch.nn.Module, got {type(model).__name__}")
    low = _dtype(dtype)
    if low not in _DEFAULT_TOLERANCE:
        raise ValueError(f"compare_precision runs the model under torch.autocast, which supports float16 and "
                         f"bfloat16, not {low}: measure fp8 storage of a tensor with analyze_tensor instead")
    args, kwargs = _split_inputs(inputs)
    device_type = device_type or _device_type(model, args, kwargs)
    if not torch.amp.is_autocast_available(device_type):
        raise ValueError(f"torch.autocast is not available for device_type={device_type!r}: use 'cpu' or 'cuda'")
    tol = _DEFAULT_TOLERANCE[low] if tolerance is None else float(tolerance)
    if not tol > 0:
        raise ValueError(f"tolerance={tolerance!r} must be a positive relative error, e.g. 0.05")
    if not isinstance(memory_budget, int) or memory_budget < 0:
        raise ValueError(f"memory_budget={memory_budget!r} must be a number of bytes >= 0")

    names = {m: n for n, m in model.named_modules()}
    layers: dict[int, LayerError] = {}
    rounds, start, peak = 0, 0, 0
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        while start is not None:
            rounds += 1
            stored, start, held = _reference_pass(model, names, args, kwargs, device_type, start, memory_budget)
            peak = max(peak, held)
            _low_pass(model, names, args, kwargs, device_type, low, stored, layers)
        grad_layers = _gradient_errors(model, args, kwargs, device_type, low, loss_fn) if gradients else []
    finally:
        for m, flag in was_training:
            m.train(flag)

    ordered = [layers[i] for i in sorted(layers)]
    first = next((e.name for e in ordered if not e.rel_error <= tol), None)
    # amplification counts only where the input already carries at least one rounding of error;
    # below that a layer's output error is its own rounding, not amplified input error
    unit = torch.finfo(low).eps / 2
    amplifying = sorted((e for e in ordered if e.gain is not None and e.gain > 1 and e.input_rel_error >= unit),
                        key=lambda e: -e.gain)
    output = next((e.rel_error for e in reversed(ordered) if e.name == ""), math.nan)  # the root call
    return PrecisionComparison(
        dtype=str(low).replace("torch.", ""), device_type=device_type, tolerance=tol, layers=ordered,
        first_exceeding=first, most_amplifying=[e.label for e in amplifying[:top]], output_rel_error=output,
        rounds=rounds, peak_stored_bytes=peak, gradients=grad_layers)


def _device_type(model: torch.nn.Module, args: tuple, kwargs: dict) -> str:
    for t in [*model.parameters(), *_tensors((args, kwargs))]:
        return t.device.type
    return "cpu"


def _float_copies(value: Any) -> list[torch.Tensor]:
    return [t.detach().float().clone() for t in _tensors(value) if t.is_floating_point()]


class ModelRunError(RuntimeError):
    """The user's model raised while compare_precision ran it (wrong inputs, most often)."""


class _StopPass(Exception):
    """Raised by a hook when the rest of the forward pass is not needed in this round."""


def _run(model: torch.nn.Module, args: tuple, kwargs: dict, device_type: str, low: torch.dtype | None,
         hook=None, loss_fn=None) -> Any:
    """One forward pass (fp32, or autocast to ``low``) with the same CPU random stream every time.

    With ``hook``: ``hook(module, inputs, output)`` on every module, under no_grad; a hook may end
    the pass early by raising :class:`_StopPass`. With ``loss_fn``: returns the loss, with grad."""
    handles = [m.register_forward_hook(hook) for m in model.modules()] if hook else []
    try:
        # the user's generator state is restored afterwards
        with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(loss_fn is not None), \
                torch.autocast(device_type, dtype=low or torch.float32, enabled=low is not None):
            torch.default_generator.manual_seed(0)
            output = model(*args, **kwargs)
            return loss_fn(output) if loss_fn else output
    except _StopPass:
        return None
    except Exception as exc:
        run = f"{low} autocast" if low is not None else "fp32"
        raise ModelRunError(f"the model raised {type(exc).__name__} in the {run} run of compare_precision: "
                           f"{exc} (check that the inputs match what the model expects)") from exc
    finally:
        for h in handles:
            h.remove()


def _projection_loss(output: Any) -> torch.Tensor:
    """Default loss for gradient comparison: a fixed random projection of every floating output
    (random rather than a plain sum, so the gradients are not all alike)."""
    outs = [t for t in _tensors(output) if t.is_floating_point()]
    if not outs:
        raise ValueError("the model returned no floating-point output to take gradients of: pass loss_fn")
    gen = torch.Generator().manual_seed(0)
    return sum((t.float() * torch.randn(t.shape, generator=gen).to(t.device)).sum() for t in outs)


def _gradient_errors(model, args, kwargs, device_type, low, loss_fn) -> list[LayerError]:
    """Per-module parameter-gradient error of the autocast run against the fp32 run.

    Holds one fp32 set of parameter gradients between the runs; activations are not kept."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        return []

    def grads(dtype):
        loss = _run(model, args, kwargs, device_type, dtype, loss_fn=loss_fn or _projection_loss)
        found = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        return [torch.zeros_like(p, dtype=torch.float32) if g is None else g.detach().float()
                for g, (_, p) in zip(found, params)]

    ref = grads(None)
    got = grads(low)
    by_module: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(params):
        by_module.setdefault(name.rpartition(".")[0], []).append(i)
    out = []
    for module_name, idx in by_module.items():
        err, cosine, bad = _relative_error([ref[i] for i in idx], [got[i] for i in idx])
        out.append(LayerError(module_name, "parameter grads", err, cosine, None, None, bad))
    return out


def _reference_pass(model, names, args, kwargs, device_type, start, budget):
    """fp32 run: copy the inputs/outputs of calls ``start, start+1, ...`` until the budget is used.

    Returns (copies by call index, the call index the next round starts at or None, bytes held)."""
    stored: dict[int, tuple[str, str, list[torch.Tensor], list[torch.Tensor]]] = {}
    state = {"calls": 0, "stop": None, "held": 0}
    seen: dict[torch.nn.Module, int] = {}

    def hook(module, inputs, output):
        index = state["calls"]
        state["calls"] += 1
        seen[module] = seen.get(module, 0) + 1
        if index < start:
            return
        # fp32 copies: 4 bytes per floating element, counted before anything is copied
        size = 4 * sum(t.numel() for t in _tensors((inputs, output)) if t.is_floating_point())
        if stored and state["held"] + size > budget:
            state["stop"] = index  # the next round starts here; this round needs no more of the pass
            raise _StopPass
        outs, ins = _float_copies(output), _float_copies(inputs)
        name = names.get(module, "?") + (f" (call {seen[module]})" if seen[module] > 1 else "")
        stored[index] = (name, type(module).__name__, ins, outs)
        state["held"] += size

    _run(model, args, kwargs, device_type, None, hook)
    return stored, state["stop"], state["held"]


def _low_pass(model, names, args, kwargs, device_type, low, stored, layers) -> None:
    """Low-precision run: compare each stored call as it happens and free its fp32 copies."""
    counter = [0]

    def hook(module, inputs, output):
        index = counter[0]
        counter[0] += 1
        ref = stored.pop(index, None)
        if ref is None:
            return
        name, kind, ref_in, ref_out = ref
        out_err, cosine, nonfinite = _relative_error(ref_out, list(_tensors(output)))
        in_err = _relative_error(ref_in, list(_tensors(inputs)))[0] if ref_in else None
        gain = out_err / in_err if in_err and math.isfinite(in_err) and math.isfinite(out_err) else None
        layers[index] = LayerError(name, kind, out_err, cosine, in_err, gain, nonfinite)
        if not stored:  # everything this round holds is compared
            raise _StopPass

    _run(model, args, kwargs, device_type, low, hook)
    if stored:
        raise RuntimeError("the model ran different module calls under autocast than in fp32 (data-dependent "
                           "control flow?): compare_precision needs the same calls in both runs")


def _relative_error(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float, int]:
    """(relative L2 error, cosine similarity, new non-finite count) of ``got`` against ``ref``."""
    got = [t for t in got if t.is_floating_point()]
    if len(got) != len(ref) or any(a.shape != b.shape for a, b in zip(ref, got)):
        return math.nan, math.nan, 0
    diff2 = dot = ref2 = got2 = 0.0
    nonfinite = 0
    for a, b in zip(ref, got):
        b = b.detach().float()
        ok = torch.isfinite(a)
        bad = int((ok & ~torch.isfinite(b)).sum())
        nonfinite += bad
        if bad:
            continue
        a, b = a[ok].double(), b[ok].double()
        diff2 += float(((a - b) ** 2).sum())
        dot += float((a * b).sum())
        ref2 += float((a * a).sum())
        got2 += float((b * b).sum())
    if nonfinite:
        return math.inf, math.nan, nonfinite
    rel = math.sqrt(diff2 / ref2) if ref2 > 0 else (0.0 if diff2 == 0 else math.inf)
    cosine = dot / math.sqrt(ref2 * got2) if ref2 > 0 and got2 > 0 else (1.0 if diff2 == 0 else 0.0)
    return rel, cosine, nonfinite
