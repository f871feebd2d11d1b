"""Lint speed: plain flake8 vs flake8 + this plugin vs flake8 + TorchFix, in CPU seconds.

    python bench/lint_speed.py [--lines 100000] [--real PATH ...] [--no-torchfix] [--repeat 3]

Corpora: the repo's examples, a synthetic corpus of realistic PyTorch project code
(bench/synthetic_corpus.py, >= 100k lines) and, as real-world code, the `modeling_*.py` files of
an installed `transformers` (or the folders given with --real). Each configuration runs in its own
virtual environment under bench/out/ (created on first use, from PyPI) so that "plain flake8"
really has no plugin loaded and TorchFix gets the libcst it pins. flake8 runs with -j1; CPU time is
user+sys of the child process, best of --repeat runs (TorchFix: one run). Per-file latency (editor
use) is the plugin's own work per file (the plugin class constructed and run on the ast tree flake8
would pass; TorchFix on every 5th file). Takes about 20 minutes with TorchFix on 2 cores.
Prints its figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out" / "lint_speed"
sys.path.insert(0, str(HERE))

from synthetic_corpus import generate  # noqa: E402

_LATENCY = textwrap.dedent(
    """\
    import ast, json, sys, time
    kind, files = sys.argv[1], sys.argv[2:]
    if kind == "plugin":
        from training_profiler.linter.plugin import AmpPlugin as Checker
        make = lambda tree, lines, path: Checker(tree, path, lines)
    else:
        from torchfix.torchfix import TorchChecker as Checker
        make = lambda tree, lines, path: Checker(tree, lines)
    times = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
        tree = ast.parse("".join(lines))  # flake8 has parsed it already: not counted
        start = time.process_time()
        list(make(tree, lines, path).run())
        times.append(time.process_time() - start)
    print(json.dumps(times))
    """
)


def _venv(name: str, packages: list[str]) -> Path:
    """A virtual environment under bench/out with ``packages`` installed (created once)."""
    path = OUT / "venvs" / name
    python = path / "bin" / "python"
    stamp = path / ".installed"
    wanted = " ".join(packages)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"  creating venv {name}: pip install {wanted}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        stamp.write_text(wanted)
    return python


def _cpu_seconds(cmd: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # cwd outside the repo: a source checkout on sys.path would register the plugin in "plain" flake8
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False, cwd=OUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _flake8_cpu(python: Path, target: Path, repeat: int) -> float:
    """Best of ``repeat`` runs (CPU time varies little run to run; the best filters interference)."""
    cmd = [str(python.parent / "flake8"), "-j1", "--exit-zero", "--output-file", os.devnull, str(target)]
    return min(_cpu_seconds(cmd) for _ in range(repeat))


def _latencies(python: Path, kind: str, files: list[Path]) -> list[float]:
    import json

    proc = subprocess.run([str(python), "-c", _LATENCY, kind, *map(str, files)], capture_output=True, text=True, check=True, cwd=OUT)
    return json.loads(proc.stdout)


def _corpora(lines: int, real: list[str]) -> dict[str, Path]:
    corpora = {"examples": REPO / "examples"}
    synthetic = OUT / f"synthetic-{lines}"
    if not synthetic.exists() or not any(synthetic.rglob("*.py")):
        generate(synthetic, lines)
    corpora["synthetic"] = synthetic
    if real:
        for path in real:
            corpora[f"real:{Path(path).name}"] = Path(path).resolve()
    else:
        try:
            import transformers
        except ImportError:
            pass
        else:
            # real-world code: every modeling_*.py of transformers, linked into one folder
            models = Path(transformers.__file__).parent / "models"
            folder = OUT / "real-transformers"
            if not folder.exists():
                folder.mkdir(parents=True)
                for src in sorted(models.glob("*/modeling_*.py")):
                    (folder / f"{src.parent.name}__{src.name}").symlink_to(src)
            corpora["real:transformers"] = folder
    return corpora


def _count_lines(folder: Path) -> tuple[int, int]:
    files = sorted(folder.rglob("*.py"))
    return len(files), sum(f.read_bytes().count(b"\n") for f in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="lines of synthetic corpus")
    parser.add_argument("--real", nargs="*", default=[], help="folders of real-world code (default: transformers)")
    parser.add_argument("--no-torchfix", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    import flake8

    flake8_pin = f"flake8=={flake8.__version__}"
    envs = {"flake8": _venv("plain", [flake8_pin]), "flake8+AMP": _venv("plugin", [flake8_pin, str(REPO)])}
    # always measure the working tree's plugin, not the copy installed when the venv was made
    subprocess.run([str(envs["flake8+AMP"]), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(REPO)],
                   check=True, capture_output=True)
    if not args.no_torchfix:
        envs["flake8+TorchFix"] = _venv("torchfix", [flake8_pin, "torchfix"])

    print(f"lint speed ({flake8_pin}, -j1, CPU seconds = user+sys, best of {args.repeat})\n")
    header = f"{'corpus':<20} {'files':>6} {'lines':>8} " + " ".join(f"{name:>16}" for name in envs) + "   ratios to flake8"
    print(header)
    print("-" * len(header))
    for label, folder in _corpora(args.lines, args.real).items():
        files, lines = _count_lines(folder)
        # TorchFix is measured once: at 5-10x plain flake8 a best-of-N changes nothing, and each run takes minutes
        cpu = {name: _flake8_cpu(python, folder, 1 if "TorchFix" in name else args.repeat) for name, python in envs.items()}
        base = cpu["flake8"]
        ratios = "  ".join(f"{name.split('+')[-1]} {cpu[name] / base:.2f}x" for name in envs if name != "flake8")
        print(f"{label:<20} {files:>6} {lines:>8} " + " ".join(f"{cpu[n]:>15.2f}s" for n in envs) + f"   {ratios}")

    print("\nper-file plugin latency (the plugin's own work per file, CPU ms), synthetic + real corpora")
    files = []
    for label, folder in _corpora(args.lines, args.real).items():
        if label != "examples":
            files += sorted(folder.rglob("*.py"))
    kinds = {"flake8+AMP": ("plugin", envs["flake8+AMP"])}
    if "flake8+TorchFix" in envs:
        kinds["flake8+TorchFix"] = ("torchfix", envs["flake8+TorchFix"])
    for name, (kind, python) in kinds.items():
        # TorchFix: every 5th file (a deterministic sample), since each takes ~0.1-1 s
        sample = files[::5] if kind == "torchfix" else files
        times = sorted(_latencies(python, kind, sample))
        p50 = statistics.median(times) * 1e3
        p95 = times[int(0.95 * (len(times) - 1))] * 1e3
        print(f"  {name:<16} files {len(times):>5}  p50 {p50:8.2f} ms  p95 {p95:8.2f} ms  max {times[-1] * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
