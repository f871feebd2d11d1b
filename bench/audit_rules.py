"""Cost of the architecture rules (FXA101-FXA109) next to the audit itself, and what they find.

    python bench/audit_rules.py [--with-7b]

For each zoo model (batch 1, the zoo's default inputs, on meta, no memory simulation) prints the
number of graph records, the audit time, the time of the rules over the records, the slowest
rule and the codes found. The rules read only the records (plus the module tree for locations), so they should stay
a small fraction of the audit.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from training_profiler.fx_audit import audit  # noqa: E402
from training_profiler.fx_audit.capture import build_model  # noqa: E402
from training_profiler.fx_audit.rules import AuditConfig, audit_rules, check_report  # noqa: E402
from training_profiler.fx_audit.rules.base import Context, Graph, Locator  # noqa: E402
from training_profiler.fx_audit.zoo import LLAMA_7B, ZOO  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--with-7b", action="store_true", help="also the LLaMA-7B config (32 layers, d=4096)")
    args = parser.parse_args()
    entries = list(ZOO.values()) + ([LLAMA_7B] if args.with_7b else [])
    print(f"{'model':<14} {'records':>8} {'audit s':>8} {'rules ms':>9} {'share':>6}  {'slowest rule':<16} findings")
    for entry in entries:
        model = build_model(entry.factory)
        with torch.device("meta"):
            inputs = entry.make_inputs(1)
        start = time.perf_counter()
        report = audit(model, inputs, memory=False)
        audited = time.perf_counter() - start
        gc.collect()  # the audit's garbage (fake tensors, graphs) is not the rules' cost
        start = time.perf_counter()
        findings = check_report(report, model)
        ruled = time.perf_counter() - start
        ctx = Context(report, Graph(report.layers), AuditConfig(), model, Locator(model, report))
        per_rule = {}
        for audit_rule in audit_rules():
            start = time.perf_counter()
            try:
                list(audit_rule.check(ctx))
            except Exception:  # noted in report.rule_errors by check_report above
                pass
            per_rule[audit_rule.code] = time.perf_counter() - start
        slowest = max(per_rule, key=per_rule.get)
        codes = ", ".join(f.code for f in findings) or "-"
        errors = "".join(f" [{e['code']} failed]" for e in report.rule_errors)
        print(f"{entry.name:<14} {len(report.layers):>8} {audited:>8.2f} {ruled * 1000:>9.1f} "
              f"{ruled / audited:>6.1%}  {slowest} {per_rule[slowest] * 1000:>6.1f} ms  {codes}{errors}")


if __name__ == "__main__":
    main()
