"""One-shot check of the CUDA target and the monitor on a machine with a CUDA GPU.

    python bench/gpu_check.py                    # everything, < 8 min on one H100
    python bench/gpu_check.py --only gpt2_small mlp --skip-monitor --out /tmp/check

On a machine without a CUDA GPU it prints one line and exits 0 (it never runs in CI).

1. Memory: for each zoo model, with fp32, bf16 autocast and fp16 autocast + GradScaler (bf16 only
   where the GPU supports it), a real training step (Adam, torch's CUDA default foreach) after two
   warm-up steps, ``torch.cuda.reset_peak_memory_stats()`` before the measured step; predicted
   (``simulate_training_step(..., target="cuda")`` on a meta copy) against
   ``max_memory_allocated`` and ``max_memory_reserved``. Error = predicted / measured - 1; the
   target is |error| <= 5% on allocated.
2. Monitor: a small transformer under ``@watch_training`` in steady state: host syncs per step
   counted with ``torch.cuda.set_sync_debug_mode("warn")`` (each synchronizing call warns), then
   the same steps under ``"error"`` (any sync raises); the added time per step against the same
   step unmonitored, in the same process (median of interleaved rounds, CUDA-synchronised).
3. ``analyze_tensor``: the fp16/bf16/fp8 reports of the same tensors on CUDA and on CPU, compared
   number by number.

Writes ``gpu_check.json`` and ``gpu_check.md`` (the tables, naming the GPU) into ``--out``
(default ``bench/results``).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (batch shape of the inputs) per zoo model: sizes that keep every step well inside 80 GB
GPU_INPUTS = {
    "resnet18": lambda: (torch.randn(64, 3, 224, 224),),
    "resnet50": lambda: (torch.randn(32, 3, 224, 224),),
    "vgg16": lambda: (torch.randn(16, 3, 224, 224),),
    "mobilenet_v3": lambda: (torch.randn(64, 3, 224, 224),),
    "vit_b16": lambda: (torch.randn(16, 3, 224, 224),),
    "gpt2_small": lambda: (torch.randint(0, 50257, (4, 1024)),),
    "bert_base": lambda: (torch.randint(0, 30522, (16, 128)),),
    "llama": lambda: (torch.randint(0, 32000, (4, 512)),),
    "mlp": lambda: (torch.randn(256, 784),),
    "lstm": lambda: (torch.randn(64, 64, 128),),
}
MODES = ("fp32", "bf16", "fp16+scaler")
TOLERANCE = 0.05


def _free() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:  # each model starts without the previous one's cuBLAS workspaces
        clear()


def _measure(name: str, mode: str) -> dict:
    """Real step on the GPU: max_memory_allocated / max_memory_reserved of the third step."""
    from training_profiler.fx_audit.memory import default_loss
    from training_profiler.fx_audit.zoo import ZOO

    _free()
    torch.manual_seed(0)
    model = ZOO[name].factory().cuda().train()
    inputs = tuple(t.cuda() for t in GPU_INPUTS[name]())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # foreach: torch's default for CUDA tensors
    amp = {"bf16": torch.bfloat16, "fp16+scaler": torch.float16}.get(mode)
    scaler = torch.amp.GradScaler("cuda") if mode == "fp16+scaler" else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            loss = default_loss(model(*inputs))
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()}


def _predict(name: str, mode: str) -> dict:
    from training_profiler.fx_audit.memory import simulate_training_step
    from training_profiler.fx_audit.zoo import ZOO

    with torch.device("meta"):
        model = ZOO[name].factory()
        inputs = GPU_INPUTS[name]()
    amp = {"bf16": "bf16", "fp16+scaler": "fp16"}.get(mode)
    t = time.perf_counter()
    report = simulate_training_step(model, inputs, optimizer="adam", amp=amp, target="cuda")
    return {"allocated": report.peak_bytes, "reserved": report.reserved_bytes, "phase": report.peak_phase,
            "confidence": report.confidence, "seconds": round(time.perf_counter() - t, 2)}


def check_memory(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        for mode in MODES:
            if mode == "bf16" and not torch.cuda.is_bf16_supported():
                continue
            row = {"model": name, "mode": mode}
            try:
                row["predicted"] = _predict(name, mode)
                row["measured"] = _measure(name, mode)
                for key in ("allocated", "reserved"):
                    row[f"error_{key}"] = row["predicted"][key] / row["measured"][key] - 1
                row["ok"] = abs(row["error_allocated"]) <= TOLERANCE
            except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                row["ok"] = False
                _free()
            print(_memory_line(row), flush=True)
            rows.append(row)
    return rows


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def _memory_line(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:14}{row['mode']:13} FAILED {row['error']}"
    p, m = row["predicted"], row["measured"]
    return (f"{row['model']:14}{row['mode']:13}{_mib(p['allocated']):>12}{_mib(m['allocated']):>12}"
            f"{row['error_allocated']:>+9.1%}{_mib(p['reserved']):>12}{_mib(m['reserved']):>12}"
            f"{row['error_reserved']:>+9.1%}  {'ok' if row['ok'] else 'MISS'}")


# --------------------------------------------------------------------------------------------
# the monitor


def _transformer():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from monitor_overhead import _Transformer  # the model of the CPU overhead benchmark, larger

    return _Transformer(d=256, layers=4).cuda()


def _syncs_per_step(fn, model, steps: int) -> float:
    """Host syncs per step: under sync debug mode "warn" every synchronizing CUDA call warns."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                fn(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught) / steps


def check_monitor(steps: int = 50, rounds: int = 5) -> dict:
    import torch.nn.functional as F

    from training_profiler import watch_training

    torch.manual_seed(0)
    tokens = torch.randint(0, 1000, (32, 128), device="cuda")
    fns = {}
    for variant in ("plain", "monitored"):
        model = _transformer()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def plain(model, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
            loss.backward()
            opt.step()
            return loss

        fns[variant] = (watch_training(plain, warmup_steps=100, alert_window=50) if variant == "monitored"
                        else plain, model)
    for fn, model in fns.values():  # past the monitor's warm-up: steady state
        for _ in range(120):
            fn(model)
    torch.cuda.synchronize()

    syncs = {variant: _syncs_per_step(fn, model, steps) for variant, (fn, model) in fns.items()}
    fn, model = fns["monitored"]
    error = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            fn(model)
    except RuntimeError as exc:
        error = str(exc).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()

    times = {"plain": [], "monitored": []}
    for _ in range(rounds):
        for variant, (fn, model) in fns.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                fn(model)
            torch.cuda.synchronize()
            times[variant].append((time.perf_counter() - t) / steps * 1e3)
    plain_ms, monitored_ms = statistics.median(times["plain"]), statistics.median(times["monitored"])
    result = {"steps": steps, "syncs_per_step": syncs["monitored"], "unmonitored_syncs_per_step": syncs["plain"],
              "error_mode": error or "no sync raised",
              "plain_ms": plain_ms, "monitored_ms": monitored_ms, "added_ms": monitored_ms - plain_ms,
              "added_fraction": monitored_ms / plain_ms - 1, "ok": syncs["monitored"] == 0 and error is None}
    print(f"monitor: {result['syncs_per_step']:.2f} syncs/step (unmonitored "
          f"{result['unmonitored_syncs_per_step']:.2f}; warn mode), error mode: {result['error_mode']}; "
          f"{plain_ms:.3f} -> {monitored_ms:.3f} ms/step ({result['added_fraction']:+.2%})", flush=True)
    del fns
    _free()
    return result


# --------------------------------------------------------------------------------------------
# analyze_tensor on CUDA against CPU


def _numbers(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)
    else:
        yield path, value


def check_analyze_tensor() -> list[dict]:
    from training_profiler.runtime.precision import analyze_tensor

    generator = torch.Generator().manual_seed(0)
    cases = {
        "normal 1024x512": torch.randn(1024, 512, generator=generator),
        "outlier columns": torch.randn(512, 256, generator=generator) * torch.logspace(-3, 3, 256),
        "tiny values": torch.randn(256, 256, generator=generator) * 1e-6,
        # data to analyse, not weights: the cast is the point
        "bf16 activations": torch.randn(2048, 128, generator=generator).to(torch.bfloat16),  # noqa: AMP201
    }
    rows = []
    for name, tensor in cases.items():
        cpu = analyze_tensor(tensor, name).to_dict()
        gpu = analyze_tensor(tensor.cuda(), name).to_dict()
        a, b = dict(_numbers(cpu)), dict(_numbers(gpu))
        worst, where, mismatched = 0.0, None, []
        for key in a:
            x, y = a[key], b.get(key)
            if isinstance(x, float) and isinstance(y, float):
                diff = abs(x - y) / max(abs(x), abs(y), 1e-30) if x != y else 0.0
                if diff > worst:
                    worst, where = diff, key
            elif x != y:
                mismatched.append(key)
        row = {"tensor": name, "max_rel_diff": worst, "at": where, "mismatched": mismatched[:5],
               "fp8_formats": [f for f in cpu["precision"] if f.startswith("float8")],
               "ok": worst <= 1e-6 and not mismatched}
        print(f"analyze_tensor {name:18} max rel diff {worst:.2e}{' at ' + where if where else ''}"
              f"{'; differs: ' + ', '.join(mismatched[:5]) if mismatched else ''}  {'ok' if row['ok'] else 'MISS'}",
              flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------


def _guarded(check):
    """Run one section; a crash is recorded (and the other sections still run and get written)."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"{check.__name__} FAILED {message}", flush=True)
        _free()
        return {"failed": message}


def markdown(result: dict) -> str:
    lines = [f"# GPU check: {result['gpu']}", "",
             f"torch {result['torch']}, CUDA {result['cuda']}, capability {result['capability']}, "
             f"{result['seconds']:.0f} s in all.", "",
             "## Training-step memory: predicted (`target=\"cuda\"`) vs measured", "",
             "| Model | Mode | Predicted allocated MiB | max_memory_allocated MiB | Error | "
             "Predicted reserved MiB | max_memory_reserved MiB | Error | Within 5% |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["memory"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['mode']} | failed: {row['error']} | | | | | | no |")
            continue
        p, m = row["predicted"], row["measured"]
        lines.append(f"| {row['model']} | {row['mode']} | {_mib(p['allocated'])} | {_mib(m['allocated'])} | "
                     f"{row['error_allocated']:+.1%} | {_mib(p['reserved'])} | {_mib(m['reserved'])} | "
                     f"{row['error_reserved']:+.1%} | {'yes' if row['ok'] else 'no'} |")
    monitor = result.get("monitor")
    if monitor and "failed" in monitor:
        lines += ["", "## Monitor in steady state", "", f"failed: {monitor['failed']}"]
    elif monitor:
        lines += ["", "## Monitor in steady state", "",
                  "| Syncs/step monitored | Syncs/step unmonitored | Error mode | Unmonitored ms/step | "
                  "Monitored ms/step | Added |",
                  "|---:|---:|---|---:|---:|---:|",
                  f"| {monitor['syncs_per_step']:.2f} | {monitor['unmonitored_syncs_per_step']:.2f} | "
                  f"{monitor['error_mode']} | {monitor['plain_ms']:.3f} | "
                  f"{monitor['monitored_ms']:.3f} | {monitor['added_fraction']:+.2%} |"]
    tensors = result.get("analyze_tensor")
    if isinstance(tensors, dict):
        lines += ["", "## analyze_tensor on CUDA vs CPU", "", f"failed: {tensors['failed']}"]
    elif tensors:
        lines += ["", "## analyze_tensor on CUDA vs CPU", "", "| Tensor | Max relative difference | Same |",
                  "|---|---:|---|"]
        lines += [f"| {r['tensor']} | {r['max_rel_diff']:.2e} | {'yes' if r['ok'] else 'no'} |"
                  for r in tensors]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="zoo models to check (default: all)")
    parser.add_argument("--skip-monitor", action="store_true")
    parser.add_argument("--skip-tensor", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing checked")
        return 0
    unknown = sorted(set(args.only or ()) - set(GPU_INPUTS))
    if unknown:
        parser.error(f"unknown zoo model(s) {', '.join(unknown)}: use {', '.join(GPU_INPUTS)}")
    start = time.perf_counter()
    result = {"gpu": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability())),
              "torch": torch.__version__, "cuda": torch.version.cuda}
    print(f"gpu_check on {result['gpu']} (sm {result['capability']}), torch {result['torch']}", flush=True)
    print(f"{'model':14}{'mode':13}{'pred MiB':>12}{'alloc MiB':>12}{'error':>9}{'pred res':>12}{'reserved':>12}"
          f"{'error':>9}", flush=True)
    result["memory"] = check_memory(args.only or list(GPU_INPUTS))
    if not args.skip_monitor:
        result["monitor"] = _guarded(check_monitor)
    if not args.skip_tensor:
        result["analyze_tensor"] = _guarded(check_analyze_tensor)
    result["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    misses = sum(not row["ok"] for row in result["memory"])
    print(f"{len(result['memory']) - misses}/{len(result['memory'])} within {TOLERANCE:.0%} of max_memory_allocated; "
          f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
