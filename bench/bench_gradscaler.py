"""Cost and findings of the GradScaler protocol detector (AMP501-AMP506) on real code.

    python bench/bench_gradscaler.py [PATH ...]      # default: the installed torch package

Prints the time of ``ast.parse`` (what flake8 has already paid for), the time of the engine
running only this detector, how many files pass its token pre-check, and every finding (on a
library corpus each one is either a real bug or a false positive to look at).
"""

from __future__ import annotations

import ast
import os
import sys
import time

from training_profiler.linter.api import iter_python_files, read_source
from training_profiler.linter.engine import analyze
from training_profiler.linter.rules.gradscaler import GradScalerProtocol


def default_corpus() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("torch is not installed: pass the folders to scan")
    return list(spec.submodule_search_locations)


def main(paths: list[str]) -> None:
    detector = GradScalerProtocol()
    enabled = set(detector.codes) | {"AMP000"}
    parse_s = analyze_s = 0.0
    files = lines = candidates = 0
    findings = []
    for path in iter_python_files(paths):
        try:
            source = read_source(path)
            start = time.perf_counter()
            tree = ast.parse(source)
        except (OSError, ValueError, SyntaxError):
            continue
        parsed = time.perf_counter()
        findings += analyze(tree, source, path, [detector], enabled)
        analyze_s += time.perf_counter() - parsed
        parse_s += parsed - start
        files += 1
        lines += source.count("\n")
        candidates += any(t in source for t in detector.tokens)
    print(f"corpus: {files} files, {lines} lines ({', '.join(paths)})")
    print(f"files passing the token pre-check: {candidates} ({100 * candidates / max(files, 1):.1f}%)")
    print(f"ast.parse:                 {parse_s:7.2f} s")
    print(f"AMP5xx detector (engine):  {analyze_s:7.2f} s  ({100 * analyze_s / max(parse_s, 1e-9):.1f}% of ast.parse)")
    print(f"findings: {len(findings)}")
    for f in findings:
        print(f"  {os.path.relpath(f.path)}:{f.line}:{f.col}: {f.code} {f.message}")


if __name__ == "__main__":
    main(sys.argv[1:] or default_corpus())
