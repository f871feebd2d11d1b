"""Cost and yield of the AMP302-AMP305 / AMP401-AMP403 detectors on real PyTorch code.

    python bench/lint_ops_rules.py [PATH ...]   (default: 12 model folders of the installed transformers)

Prints, for the corpus: lines, ast.parse time (what flake8 pays before any plugin runs), the
engine's bare traversal (a detector with no hooks and no token filter) and the engine running
these detectors (their token filters skip files, their hooks cost per node), flake8
(-j1, default checks) with the AMP plugin against the same run with the plugin's analysis stubbed
out, and how many findings each code produces (the first few per code are listed, so false
positives can be reviewed by eye). Times are CPU seconds, the best of 3 runs (flake8: of 2).
"""

from __future__ import annotations

import ast
import collections
import os
import resource
import subprocess
import sys
import time

from training_profiler.linter.api import iter_python_files, read_source
from training_profiler.findings import Rule, Severity
from training_profiler.linter.engine import LintRule, analyze
from training_profiler.linter.rules import all_detectors

DEFAULT_MODELS = ("bert", "gpt2", "t5", "llama", "whisper", "vit", "clip", "bart", "mistral", "deberta_v2", "wav2vec2", "mixtral")
CODES = ("AMP302", "AMP303", "AMP304", "AMP305", "AMP401", "AMP402", "AMP403")


class _BareTraversal(LintRule):
    """No hooks, no tokens: what the shared traversal costs on its own."""

    rules = (Rule(code="AMP999", name="bench", severity=Severity.INFO, message="", why="", fix=""),)


def _corpus(paths: list[str]) -> list[tuple[str, str, ast.Module]]:
    files = []
    for path in iter_python_files(paths):
        try:
            source = read_source(path)
            files.append((path, source, ast.parse(source)))
        except (ValueError, SyntaxError, OSError):
            continue
    return files


def _best_of(n: int, fn) -> float:
    best = float("inf")
    for _ in range(n):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


_FLAKE8 = """
import sys
from flake8.main.cli import main
if sys.argv[1] == "plain":  # keep the plugin loaded, skip its analysis
    from training_profiler.linter.plugin import AmpPlugin
    AmpPlugin.run = lambda self: iter(())
sys.exit(main(["-j1", "--select=E,F,W,C90,AMP", "--exit-zero", *sys.argv[2:]]))
"""


def _flake8_cpu(mode: str, paths: list[str]) -> float:
    best = float("inf")
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", _FLAKE8, mode, *paths], check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return best


def main(argv: list[str]) -> int:
    if argv:
        paths = argv
    else:
        import transformers

        models = os.path.join(os.path.dirname(transformers.__file__), "models")
        paths = [os.path.join(models, m) for m in DEFAULT_MODELS]
    files = _corpus(paths)
    lines = sum(source.count("\n") + 1 for _, source, _ in files)
    sources = [source for _, source, _ in files]

    traversal = [_BareTraversal()]
    mine = [d for d in all_detectors() if set(d.codes) & set(CODES)]
    enabled = {r.code for d in all_detectors() for r in d.rules} | {"AMP999"}

    def run(detectors):
        out = []
        for path, source, tree in files:
            out.extend(analyze(tree, source, path, detectors, enabled))
        return out

    parse_s = _best_of(3, lambda: [ast.parse(s) for s in sources])
    base_s = _best_of(3, lambda: run(traversal))
    mine_s = _best_of(3, lambda: run(mine))
    findings = run(mine)
    plain_s = _flake8_cpu("plain", paths)
    plugin_s = _flake8_cpu("plugin", paths)

    print(f"corpus: {len(files)} files, {lines} lines ({', '.join(paths)})")
    print(f"ast.parse (flake8 pays this anyway): {parse_s:.2f} s")
    print(f"engine, bare traversal:              {base_s:.2f} s ({1e6 * base_s / lines:.1f} ms per 1k lines)")
    print(f"engine with AMP302-AMP403:           {mine_s:.2f} s ({1e6 * mine_s / lines:.1f} ms per 1k lines, "
          f"{100 * mine_s / parse_s:.0f}% of parse time)")
    print(f"flake8 -j1 without / with the AMP plugin: {plain_s:.2f} s / {plugin_s:.2f} s = {plugin_s / plain_s:.2f}x")
    by_code = collections.defaultdict(list)
    for f in findings:
        by_code[f.code].append(f)
    for code in CODES + ("AMP000",):
        print(f"{code}: {len(by_code[code])} findings")
        for f in by_code[code][:4]:
            print(f"    {os.path.relpath(f.path, os.path.dirname(paths[0]))}:{f.line}:{f.col}  {f.message[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
