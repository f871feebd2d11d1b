"""How long analyze_tensor takes on a 100M-element float32 tensor on CPU (and, with --compare,
what compare_precision's memory budget buys on a deep MLP).

Range statistics (dim_stats) read every element; the precision figures (four round trips,
fp8 scaling, reduction checks) run on a seeded sample of whole rows, max_elements=2**20 by
default. Prints wall-clock seconds per shape and the sample size; run with
`python bench/tensor_analyzer.py [--elements N] [--threads T] [--compare]`.
"""

import argparse
import resource
import time

import torch

from training_profiler import analyze_tensor
from training_profiler.runtime import precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=100_000_000)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: the machine is shared)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--compare", action="store_true", help="only the compare_precision memory figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare:
        compare_memory()
        return
    n = args.elements
    print(f"torch {torch.__version__}, {args.threads} threads, {n:,} float32 elements ({n * 4 / 2**20:.0f} MiB)")
    for cols in (1, 4, 1024):
        rows = n // cols
        x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
        x[:, 0] *= 1000.0  # one large column, so the reduction check has work to do
        tensor = x.reshape(-1) if cols == 1 else x
        times, stats_times = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            report = analyze_tensor(tensor, name="bench")
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            precision._dim_stats(precision._as_rows(tensor, None))
            stats_times.append(time.perf_counter() - start)
        s = report.sample
        print(f"shape {tuple(tensor.shape)!s:<18} analyze_tensor {min(times):6.2f} s  (full-tensor range pass "
              f"{min(stats_times):5.2f} s; precision on a sample of {s['elements']:,} elements, {s['rows']:,} rows)  "
              f"risk {report.risk_level}")
        del x, tensor


def compare_memory() -> None:
    """compare_precision on a 24-layer MLP whose activations total ~1.6 GB if all kept: peak RSS
    (process high-water mark, so the bounded run goes first) and rounds for two budgets."""
    from training_profiler import compare_precision

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(24)])
    x = torch.randn(4096, 1024)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"compare_precision, 24 x Linear(1024), input 4096x1024 (16 MiB per activation); "
          f"RSS before: {base:.0f} MiB")
    for budget in (64 << 20, 1 << 40):
        start = time.perf_counter()
        r = compare_precision(model, x, dtype="bf16", memory_budget=budget)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        label = "unbounded" if budget == 1 << 40 else f"{budget >> 20} MiB"
        print(f"budget {label:>9}: {r.rounds:2d} rounds, {time.perf_counter() - start:6.2f} s, "
              f"peak stored {r.peak_stored_bytes / 2**20:7.0f} MiB, process peak RSS {peak:6.0f} MiB, "
              f"output error {r.output_rel_error:.3g}")


if __name__ == "__main__":
    main()
