"""Measure the CPU kernel workspaces that fake tensors do not show, and fit the rules of
``training_profiler/fx_audit/targets/cpu.py`` to them.

    python bench/fit_cpu_workspace.py measure        # ~5 min on 2 cores: writes bench/data/cpu_workspace.json
    python bench/fit_cpu_workspace.py fit [--write]  # prints the fitted constants and the held-out errors;
                                                      # --write regenerates targets/cpu_gemm_table.py

``measure`` runs one subprocess per oneDNN instruction set this CPU supports (``ONEDNN_MAX_CPU_ISA``
is read once, when oneDNN initialises) and per thread count (1, 2); each measures real kernels
with ``torch.profiler(profile_memory=True)``: the peak of the CPU allocator during the op minus
the bytes of its outputs is the op's transient workspace. Every row records the torch version,
the ISA and the thread count. ``fit`` is also what ``tests/test_fx_cpu_workspace.py`` runs: the
constants it prints are the constants in the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "cpu_workspace.json"
THREADS = (1, 2)

# GEMM shapes (M, K, N): a grid to fit on, and off-grid shapes held out to check the fit
GEMM_FIT = [(m, k, n) for m in (8, 64, 512) for k in (64, 256, 1024, 4096) for n in (16, 128, 1024)]
GEMM_HOLDOUT = [(24, 100, 10), (200, 768, 1000), (64, 3000, 50), (384, 200, 777), (1000, 512, 96), (48, 1500, 3000)]
# Where oneDNN runs no low-precision GEMM, ATen's fallback is ~1000x slower: small shapes only
_FALLBACK_MAX_MACS = 1 << 21
# the three layouts of a Linear's training step: forward addmm(bias, x, W^T), backward mm(grad, W)
# for the input grad and mm(grad^T, x) for the weight grad
GEMM_LAYOUTS = ("a_bt", "a_b", "at_b")
# LSTM layers (T, B, I, H)
RNN_FIT = [(t, b, i, h) for t in (5, 20, 50) for b in (1, 4, 16) for i in (16, 128) for h in (32, 128, 256)]
RNN_HOLDOUT = [(10, 8, 64, 96), (30, 2, 300, 200), (64, 32, 128, 512)]


# --------------------------------------------------------------------------------------------
# measuring (in a subprocess per ISA and thread count)


def _transient(fn, *args) -> tuple[int, object]:
    """(peak CPU allocator bytes during fn(*args) beyond its outputs, the outputs), measured on
    the second call (the first creates and caches the oneDNN primitive)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._pytree import tree_leaves

    fn(*args)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(*args)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    outputs = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
    return peak - sum(outputs.values()), out


def _gemm_rows(dtype_name: str, isa: str) -> list[dict]:
    import torch

    from training_profiler.fx_audit.targets.cpu import gemm_kernel

    dtype = getattr(torch, dtype_name)
    rows = []
    for holdout, shapes in ((False, GEMM_FIT), (True, GEMM_HOLDOUT)):
        for m, k, n in shapes:
            if gemm_kernel(isa, dtype_name) is None and m * k * n > _FALLBACK_MAX_MACS:
                continue
            a, b, bias = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.randn(n, dtype=dtype)
            calls = {
                "a_bt": (torch.addmm, bias, a, b.t().contiguous().t()),
                "a_b": (torch.mm, a, b),
                "at_b": (torch.mm, a.t().contiguous().t(), b),
            }
            for layout in GEMM_LAYOUTS:
                fn, *args = calls[layout]
                rows.append({"op": "gemm", "dtype": dtype_name, "layout": layout, "m": m, "k": k, "n": n,
                             "holdout": holdout, "transient": _transient(fn, *args)[0]})
    return rows


def _rnn_rows() -> list[dict]:
    """mkldnn_rnn_layer (forward: the workspace it returns, its transient) and its backward (transient)
    of one nn.LSTM layer, caught in a real training step by a dispatch mode that re-runs them."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    rows = []

    class Measure(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name not in ("mkldnn_rnn_layer", "mkldnn_rnn_layer_backward"):
                return func(*args, **(kwargs or {}))
            transient, out = _transient(lambda *a: func(*a, **(kwargs or {})), *args)
            row = dict(shape, op=name, holdout=holdout, transient=transient)
            if name == "mkldnn_rnn_layer":
                row["workspace"] = out[3].untyped_storage().nbytes()
            rows.append(row)
            return out

    for holdout, shapes in ((False, RNN_FIT), (True, RNN_HOLDOUT)):
        for t, b, i, h in shapes:
            shape = {"dtype": "float32", "t": t, "b": b, "i": i, "h": h}
            lstm = torch.nn.LSTM(i, h)
            x = torch.randn(t, b, i)
            with Measure():
                lstm(x)[0].sum().backward()
    return rows


def _worker() -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ["FIT_THREADS"]))
    isa = os.environ["ONEDNN_MAX_CPU_ISA"]
    rows = _gemm_rows("bfloat16", isa) + _gemm_rows("float16", isa) + _rnn_rows()
    common = {"torch": torch.__version__, "isa": os.environ["ONEDNN_MAX_CPU_ISA"], "threads": torch.get_num_threads()}
    json.dump([dict(common, **row) for row in rows], sys.stdout)


def measure() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from training_profiler.fx_audit.targets.cpu import supported_isas

    rows = []
    for isa in supported_isas():
        for threads in THREADS:
            env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, FIT_THREADS=str(threads))
            done = subprocess.run([sys.executable, __file__, "_worker"], env=env, check=True, capture_output=True, text=True)
            rows += json.loads(done.stdout)
            print(f"{isa} x{threads}: {len(rows)} rows", file=sys.stderr, flush=True)
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")  # a row per line
    print(f"wrote {len(rows)} rows to {DATA}")


# --------------------------------------------------------------------------------------------
# fitting (pure Python + numpy: tests/test_fx_cpu_workspace.py runs it on the committed data)


def load(path: Path = DATA) -> list[dict]:
    return json.loads(path.read_text())


def envelope(features: list[list[float]], values: list[float]) -> tuple[float, ...]:
    """The tightest linear upper envelope: coefficients c >= 0 minimising sum_j c.x_j subject to
    c.x_j >= y_j for every point. A linear programme whose optimum lies on a vertex, where as many
    constraints (points on the envelope, or coefficients at zero) are tight as there are
    coefficients: small enough here to enumerate them all. Coefficients are rounded up to three
    significant digits, which keeps every point under the envelope."""
    import itertools

    import numpy as np

    x, y = np.array(features, dtype=float), np.array(values, dtype=float)
    count = x.shape[1]
    best, best_cost = None, float("inf")
    for zeros in range(count):
        for zero_set in itertools.combinations(range(count), zeros):
            free = [i for i in range(count) if i not in zero_set]
            for tight in itertools.combinations(range(len(y)), len(free)):
                sub = x[np.ix_(tight, free)]
                if abs(np.linalg.det(sub)) < 1e-9:
                    continue
                c = np.zeros(count)
                c[free] = np.linalg.solve(sub, y[list(tight)])
                if (c < -1e-9).any() or (x @ c < y * (1 - 1e-9)).any():
                    continue
                cost = float((x @ c).sum())
                if cost < best_cost - 1e-6:
                    best, best_cost = c, cost
    return tuple(_ceil_3(v) for v in best)


def _ceil_3(value: float) -> float:
    """Round up to three significant digits (0 stays 0)."""
    import math

    if value <= 1e-12:
        return 0.0
    scale = 10 ** (math.floor(math.log10(value)) - 2)
    return round(math.ceil(value / scale - 1e-9) * scale, 10)


def _rnn_features(row: dict) -> dict[str, list[float]]:
    """The features of each RNN formula in targets/cpu.py, in bytes."""
    tbh = row["t"] * row["b"] * row["h"] * 4
    states = (row["t"] + 1) * row["b"] * max(row["i"], row["h"]) * 4  # oneDNN sizes its state rows by max(I, H)
    weights = 4 * 4 * row["h"] * (row["i"] + row["h"])  # w_ih (4H x I) + w_hh (4H x H), fp32
    return {"workspace": [tbh, states, 1.0], "scratch": [tbh, weights, 1.0]}


_RNN_FITS = {  # constant name in targets/cpu.py -> (op, measured field, feature set)
    "RNN_WORKSPACE": ("mkldnn_rnn_layer", "workspace", "workspace"),
    "RNN_FORWARD_SCRATCH": ("mkldnn_rnn_layer", "transient", "scratch"),
    "RNN_BACKWARD_SCRATCH": ("mkldnn_rnn_layer_backward", "transient", "scratch"),
}


def fit_rnn(rows: list[dict]) -> tuple[dict[str, tuple[float, ...]], list[str]]:
    """({constant name: coefficients}, lines of held-out errors). Rows of every ISA and thread
    count: the fp32 RNN kernels allocate the same bytes on all of them (checked here)."""
    from training_profiler.fx_audit.targets import cpu

    constants, report = {}, []
    for name, (op, field, kind) in _RNN_FITS.items():
        by_shape: dict[tuple, set] = {}
        for r in rows:
            if r["op"] == op:
                by_shape.setdefault((r["t"], r["b"], r["i"], r["h"], r["holdout"]), set()).add(r[field])
        varying = [shape for shape, values in by_shape.items() if len(values) > 1]
        if varying:
            raise ValueError(f"{op} {field} differs between ISAs or thread counts at {varying[:3]}: fit them apart")
        fit_rows = [dict(zip("tbih", shape), value=max(v)) for shape, v in by_shape.items() if not shape[4]]
        constants[name] = coefficients = envelope([_rnn_features(r)[kind] for r in fit_rows], [r["value"] for r in fit_rows])
        for shape, values in sorted(by_shape.items()):
            if shape[4]:
                row = dict(zip("tbih", shape))
                predicted = cpu.rnn_bytes(coefficients, *_rnn_features(row)[kind][:2], pages=field == "workspace")
                report.append(f"  {name} T,B,I,H={shape[:4]}: predicted {predicted:,} measured {max(values):,} "
                              f"({predicted / max(values) - 1:+.1%})")
    return constants, report


TABLE = Path(__file__).resolve().parents[1] / "training_profiler" / "fx_audit" / "targets" / "cpu_gemm_table.py"


def _gemm_by_kernel(rows: list[dict]) -> dict[tuple, dict[tuple, int]]:
    """(kernel, dtype, layout, threads) -> {(m, k, n, holdout): transient}; ISA levels that run
    the same kernel must have measured the same bytes (checked)."""
    from training_profiler.fx_audit.targets.cpu import gemm_kernel

    table: dict[tuple, dict[tuple, int]] = {}
    for r in rows:
        if r["op"] != "gemm":
            continue
        cell = table.setdefault((gemm_kernel(r["isa"], r["dtype"]), r["dtype"], r["layout"], r["threads"]), {})
        shape = (r["m"], r["k"], r["n"], r["holdout"])
        if cell.setdefault(shape, r["transient"]) != r["transient"]:
            raise ValueError(f"{r['isa']} measured {r['transient']} for {shape}, another ISA with the same kernel "
                             f"{cell[shape]}: the kernel map in targets/cpu.py is wrong")
    return table


def fit_gemm(rows: list[dict]) -> tuple[dict, str, list[str]]:
    """({constant name: coefficients}, text of targets/cpu_gemm_table.py, lines of held-out
    errors). No oneDNN kernel: no scratch (checked). gemm:jit:bf16 (AVX512_CORE) keeps an fp32
    copy of the output: an envelope over M*N*4. The brgemm kernels' scratch follows oneDNN's
    blocking heuristics, not one formula: the table of measured bytes on the grid."""
    from training_profiler.fx_audit.targets import cpu

    by_kernel = _gemm_by_kernel(rows)
    nonzero = [key for key, cell in by_kernel.items() if key[0] is None and any(cell.values())]
    if nonzero:
        raise ValueError(f"scratch measured where ATen runs the GEMM without oneDNN: {nonzero}")
    jit = [(m * n * 4, v) for key, cell in by_kernel.items() if key[0] == "gemm:jit:bf16"
           for (m, k, n, holdout), v in cell.items() if not holdout]
    constants = {"GEMM_JIT_BF16": envelope([[x, 1.0] for x, _ in jit], [v for _, v in jit])}
    grid = sorted((m, k, n) for m, k, n, holdout in by_kernel[("gemm:jit:bf16", "bfloat16", "a_b", 1)] if not holdout)
    table = {
        "GRID": {axis: tuple(sorted({g[i] for g in grid})) for i, axis in enumerate("mkn")},
        "SCRATCH": {key: tuple(by_kernel[key][(*g, False)] for g in grid)
                    for key in sorted(k for k in by_kernel if k[0] not in (None, "gemm:jit:bf16"))},
    }
    versions = ", ".join(sorted({r["torch"] for r in rows}))
    lines = [
        '"""Measured oneDNN brgemm matmul scratch in bytes, generated by `python bench/fit_cpu_workspace.py fit',
        f'--write` from bench/data/cpu_workspace.json (torch {versions}): do not edit.',
        "",
        "SCRATCH[(kernel, dtype, layout, threads)] holds the bytes at every GRID point, m-major, then k, then n.",
        '"""',
        "",
        f"GRID = {table['GRID']!r}",
        "SCRATCH = {",
        *(f"    {key!r}: {values!r}," for key, values in table["SCRATCH"].items()),
        "}",
    ]
    table_text = "\n".join(lines) + "\n"

    report = []
    for key, cell in sorted(by_kernel.items(), key=lambda item: str(item[0])):
        kernel, dtype, layout, threads = key
        errors = []
        for (m, k, n, holdout), measured in cell.items():
            if holdout:
                predicted = cpu.gemm_scratch(kernel, dtype, layout, threads, m, k, n,
                                             jit=constants["GEMM_JIT_BF16"], table=table)
                errors.append((predicted - measured) / max(measured, 1))
        if errors and kernel is not None:
            report.append(f"  {kernel} {dtype} {layout} x{threads}: held-out error {min(errors):+.0%} .. {max(errors):+.0%}")
    return constants, table_text, report


def fit_and_print(write: bool = False) -> None:
    rows = load()
    versions = sorted({r["torch"] for r in rows})
    print(f"{len(rows)} rows, torch {', '.join(versions)}, ISAs {', '.join(sorted({r['isa'] for r in rows}))}")
    constants, report = fit_rnn(rows)
    gemm_constants, table_text, gemm_report = fit_gemm(rows)
    for name, coefficients in {**constants, **gemm_constants}.items():
        print(f"{name} = {coefficients}")
    print("held-out shapes (predicted / measured - 1):")
    print("\n".join(report + gemm_report))
    if write:
        TABLE.write_text(table_text)
        print(f"wrote {TABLE}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "fit"
    {"measure": measure, "_worker": _worker, "fit": lambda: fit_and_print("--write" in sys.argv)}[command]()
