"""How fast is `audit()`? Wall time and peak RSS for LLaMA-7B on meta, then every zoo model.

    python bench/audit_speed.py            # LLaMA-7B FLOPs only, then the zoo (FLOPs only)
    python bench/audit_speed.py --memory   # also the training-step memory simulation (Adam)
    python bench/audit_speed.py --plan     # distributed plans: LLaMA-7B FSDP at 8 ranks, the full
                                           # `plan` table of LLaMA-70B at 64 ranks (--repeat N)

Each model is audited in a fresh subprocess so that peak RSS (``ru_maxrss``) belongs to it alone.
Prints a table; not a timed test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from training_profiler.fx_audit import audit, build_model
from training_profiler.fx_audit.zoo import LLAMA_7B, ZOO
name, batch, memory = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
entry = LLAMA_7B if name == "llama_7b" else ZOO[name]
t_import = time.perf_counter()
model = build_model(entry.factory)
with torch.device("meta"):
    inputs = entry.make_inputs(batch)
t_build = time.perf_counter()
report = audit(model, inputs, optimizer="adam", memory=memory)
t_audit = time.perf_counter()
print(json.dumps({
    "import_s": t_import - t0, "build_s": t_build - t_import, "audit_s": t_audit - t_build,
    "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "params": report.totals["params"], "macs": report.totals["macs"],
    "flops_fwd": report.totals["flops_forward"], "flops_bwd": report.totals["flops_backward"],
    "peak": report.totals["peak_bytes"], "nodes": len(report.layers), "path": report.capture.path,
}))
"""


PLAN_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from training_profiler.fx_audit import build_model
from training_profiler.fx_audit.parallel import plan_strategies, simulate_parallel_step
from training_profiler.fx_audit.zoo import Llama, llama_7b_like
which = sys.argv[1]
if which == "llama_7b":
    model = build_model(llama_7b_like)  # max_seq 2048
    seq = 2048
else:  # LLaMA-2-70B: 80 layers, d=8192, 64 query heads sharing 8 key/value heads
    model = build_model(lambda: Llama(vocab_size=32000, dim=8192, depth=80, heads=64, kv_heads=8, hidden=28672,
                                      max_seq=4096))
    seq = 4096
inputs = (torch.zeros(1, seq, dtype=torch.int64, device="meta"),)
t_build = time.perf_counter()
if which == "llama_7b":
    report = simulate_parallel_step(model, inputs, optimizer="adamw", amp="bf16", parallel="fsdp", world_size=8)
    out = {"peak": report.peak_bytes, "rows": 1}
else:
    plan = plan_strategies(model, inputs, world_size=64, budget=80 * 2**30, optimizer="adamw", amp="bf16")
    out = {"peak": min(r.peak_bytes for r in plan.rows), "rows": len(plan.rows), "recommendation": plan.recommendation}
out.update(build_s=t_build - t0, plan_s=time.perf_counter() - t_build,
           rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""


def plan_speed(which: list[str], repeat: int = 1) -> None:
    """Targets: LLaMA-7B FSDP at 8 ranks <= 10 s; LLaMA-70B plan table at 64 ranks <= 60 s, <= 2 GB RSS.
    With ``repeat`` > 1, each plan runs that many times (fresh processes, alternating): the
    median, then the range."""
    print(f"{'plan':<32} {'rows':>4} {'plan s':>8} {'range s':>12} {'peak RSS':>10} {'smallest peak/rank':>19}")
    titles = {"llama_7b": "LLaMA-7B fsdp, 8 ranks, 1x2048", "llama_70b": "LLaMA-70B table, 64 ranks, 1x4096"}
    runs: dict[str, list[dict]] = {name: [] for name in titles if name in which}
    for _ in range(repeat):
        for name in runs:
            done = subprocess.run([sys.executable, "-c", PLAN_CHILD, name], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{titles[name]:<32} failed: {done.stderr.strip().splitlines()[-1]}")
                return
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    for name, results in runs.items():
        times = sorted(r["plan_s"] for r in results)
        r = results[0]
        spread = f"{times[0]:.1f}-{times[-1]:.1f}" if len(times) > 1 else "-"
        print(f"{titles[name]:<32} {r['rows']:>4} {times[len(times) // 2]:>8.1f} {spread:>12} "
              f"{max(x['rss_mib'] for x in results):>6.0f} MiB {r['peak'] / 2**30:>15.2f} GiB"
              + (f"  recommendation: {r['recommendation']}" if r.get("recommendation") else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="include the training-step memory simulation")
    parser.add_argument("--models", default="llama_7b,resnet18,resnet50,vgg16,mobilenet_v3,vit_b16,gpt2_small,"
                                            "bert_base,llama,mlp,lstm")
    parser.add_argument("--plan", action="store_true", help="time distributed plans instead (LLaMA-7B, LLaMA-70B)")
    parser.add_argument("--plan-models", default="llama_7b,llama_70b", help="which plans to time with --plan")
    parser.add_argument("--repeat", type=int, default=1, help="with --plan: runs of each plan (median and range)")
    args = parser.parse_args()
    if args.plan:
        plan_speed(args.plan_models.split(","), args.repeat)
        return
    print(f"{'model':<13} {'params':>15} {'fwd+bwd FLOPs':>16} {'nodes':>6} {'build s':>8} {'audit s':>8} "
          f"{'total s':>8} {'peak RSS':>10} {'train peak':>11}")
    for name in args.models.split(","):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, name, "1", "1" if args.memory else "0"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"{name:<13} failed: {done.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        peak = f"{r['peak'] / 2**30:.2f} GiB" if r["peak"] else "-"
        print(f"{name:<13} {r['params']:>15,} {r['flops_fwd'] + r['flops_bwd']:>16.4g} {r['nodes']:>6} "
              f"{r['build_s']:>8.2f} {r['audit_s']:>8.2f} {wall:>8.2f} {r['rss_mib']:>6.0f} MiB {peak:>11}")


if __name__ == "__main__":
    main()
