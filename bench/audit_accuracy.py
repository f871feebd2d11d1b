"""Accuracy of the fx_audit engine on the model zoo: params, forward MACs, training-step peak.

    python bench/audit_accuracy.py            # the 10 zoo models (+ transformers rows if installed)
    python bench/audit_accuracy.py --only gpt2_small lstm

Speed (LLaMA-7B on meta, wall time and max RSS) is measured by ``bench/audit_speed.py --memory``.

For each model, with small batch/sequence sizes so that real CPU steps fit in a few GB:
- params: ``audit()`` against ``model.parameters()`` counted by identity (tied weights once);
- MACs: ``audit()`` against a reference: ``torch.utils.flop_counter.FlopCounterMode`` on a real
  forward, plus the formulas it lacks (CPU flash attention via its own ``sdpa_flop_count``,
  ``mkldnn_rnn_layer`` as T*B*4H*(I+H) MACs per layer), FLOPs / 2;
- peak: ``simulate_training_step`` (fake tensors, Adam, fp32) against ``measure_training_step``:
  the CPU allocator's allocation/free events (``torch.profiler``, ``profile_memory=True``) during
  the third real step, on top of the bytes alive when it starts (params, buffers, Adam state,
  inputs). Error = predicted / measured - 1.
Targets: MACs within +-1% and peak within +-5% on 10/10, never under by more than 5%.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import torch

from training_profiler.fx_audit.memory import measure_training_step, simulate_training_step
from training_profiler.fx_audit.zoo import ZOO

# name -> (batch, inputs factory) with small shapes; images stay 224x224 (ViT's patch grid needs it)
_IMAGES = lambda b: (torch.randn(b, 3, 224, 224),)  # noqa: E731
BENCH_INPUTS = {
    "resnet18": lambda: _IMAGES(2),
    "resnet50": lambda: _IMAGES(1),
    "vgg16": lambda: _IMAGES(1),
    "mobilenet_v3": lambda: _IMAGES(2),
    "vit_b16": lambda: _IMAGES(1),
    "gpt2_small": lambda: (torch.randint(0, 50257, (1, 128)),),
    "bert_base": lambda: (torch.randint(0, 30522, (2, 64)),),
    "llama": lambda: (torch.randint(0, 32000, (1, 128)),),
    "mlp": lambda: (torch.randn(64, 784),),
    "lstm": lambda: (torch.randn(8, 64, 128),),
}


def reference_macs(model: torch.nn.Module, inputs: tuple) -> int:
    """FlopCounterMode on a real forward + the formulas it lacks, in MACs."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    aten = torch.ops.aten

    # FlopCounterMode hands custom formulas the shapes of the arguments, as to its own formulas
    def cpu_flash(query, key, value, *args, **kwargs):
        return sdpa_flop_count(query, key, value)

    def rnn_layer(input, w_ih, w_hh, *args, **kwargs):
        steps_batch = input[0] * input[1]
        return 2 * steps_batch * w_ih[0] * (w_ih[1] + w_hh[1])

    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash, aten.mkldnn_rnn_layer: rnn_layer}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() // 2


def bench_row(name: str, model: torch.nn.Module, inputs: tuple) -> dict:
    from training_profiler.fx_audit import audit

    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    report = audit(model, inputs, memory=False)
    audit_s = time.perf_counter() - t0
    ref_macs = reference_macs(model, inputs)
    t0 = time.perf_counter()
    predicted = simulate_training_step(model, inputs, optimizer="adam")
    sim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    measured = measure_training_step(model, inputs, optimizer="adam")
    real_s = time.perf_counter() - t0
    return {
        "model": name,
        "inputs": " ".join("x".join(map(str, t.shape)) for t in inputs),
        "params": report.totals["params"],
        "params_ref": params,
        "macs": report.totals["macs"],
        "macs_ref": ref_macs,
        "peak": predicted.peak_bytes,
        "peak_ref": measured,
        "where": predicted.peak_phase + (f" @ {predicted.peak_module}" if predicted.peak_module else ""),
        "confidence": predicted.confidence,
        "times": f"{audit_s:.1f}/{sim_s:.1f}/{real_s:.1f}",
    }


def _err(value: int, ref: int) -> float:
    return 100.0 * (value / ref - 1.0) if ref else 0.0


def print_table(rows: list[dict]) -> None:
    print("| model | inputs | params | params ok | MACs (audit) | MACs (ref) | MACs err | peak predicted | "
          "peak measured | peak err | peak at | conf | s audit/sim/real |")
    print("|---|---|---:|:-:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['inputs']} | {r['params']:,} | {'yes' if r['params'] == r['params_ref'] else 'NO'} "
            f"| {r['macs']:,} | {r['macs_ref']:,} | {_err(r['macs'], r['macs_ref']):+.2f}% "
            f"| {r['peak'] / 2**20:,.1f} MiB | {r['peak_ref'] / 2**20:,.1f} MiB "
            f"| {_err(r['peak'], r['peak_ref']):+.2f}% "
            f"| {r['where']} | {r['confidence']} | {r['times']} |"
        )
    macs_ok = sum(abs(_err(r["macs"], r["macs_ref"])) <= 1.0 for r in rows)
    peak_ok = sum(abs(_err(r["peak"], r["peak_ref"])) <= 5.0 for r in rows)
    under = sum(_err(r["peak"], r["peak_ref"]) < -5.0 for r in rows)
    mean_abs = sum(abs(_err(r["peak"], r["peak_ref"])) for r in rows) / max(len(rows), 1)
    print(f"\nMACs within 1%: {macs_ok}/{len(rows)}; peak within 5%: {peak_ok}/{len(rows)}; "
          f"under-predicted by more than 5%: {under}; mean |peak error| {mean_abs:.2f}%")


def transformers_rows() -> list[tuple[str, torch.nn.Module, tuple]]:
    try:
        import transformers
    except ImportError:
        return []
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=8000,
                                                                n_positions=256, use_cache=False))
    bert = transformers.BertForMaskedLM(transformers.BertConfig(num_hidden_layers=2, hidden_size=256,
                                                                num_attention_heads=4, intermediate_size=1024,
                                                                vocab_size=8000))
    return [
        ("hf_gpt2_2layer", gpt2, (torch.randint(0, 8000, (2, 128)),)),
        ("hf_bert_2layer", bert, (torch.randint(0, 8000, (2, 128)),)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="zoo model names")
    parser.add_argument("--no-transformers", action="store_true")
    args = parser.parse_args(argv)
    rows, failures = [], []
    cases = [(n, None, None) for n in ZOO if not args.only or n in args.only]
    if not args.only and not args.no_transformers:
        cases += transformers_rows()
    for name, model, inputs in cases:
        if model is None:
            torch.manual_seed(0)
            model, inputs = ZOO[name].factory(), BENCH_INPUTS[name]()
        try:
            row = bench_row(name, model, inputs)
        except Exception as exc:  # a bench reports failures as rows and goes on
            print(f"{name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
            failures.append(name)
            continue
        print(f"{name}: peak {_err(row['peak'], row['peak_ref']):+.2f}%, "
              f"MACs {_err(row['macs'], row['macs_ref']):+.2f}% "
              f"({row['times']} s)", file=sys.stderr, flush=True)
        rows.append(row)
        del model, inputs
        gc.collect()
    print_table(rows)
    if failures:
        print(f"failed: {', '.join(failures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
