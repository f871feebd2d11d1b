"""Linter precision on real code: lint the Python files of published packages with model and
training code, print the findings per code, and score them against a reviewed verdict list.

    python bench/real_code_precision.py                 # download (once), lint, score
    python bench/real_code_precision.py --write-missing # append unreviewed findings (verdict "?")

The wheels are fetched with ``pip download --no-deps`` (no dependency is installed: the linter
reads source, it never imports it) and unzipped under ``--cache``. Each package is linted twice
with the default code selection (errors and warnings; info is off by default):

* ``file``: no configuration, so the low-precision rules use each file's own evidence
  (autocast, GradScaler, .half(), torch.float16 / bfloat16);
* ``amp``: ``amp = true``, what a package that trains with AMP sets, so every file counts as
  running in low precision.

Every finding of either run must have a verdict in ``bench/real_code_verdicts.tsv`` (TP or FP with
a one-line reason, reviewed by hand). Targets: precision >= 90% overall and every error a TP.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training_profiler.findings import Severity  # noqa: E402
from training_profiler.linter.api import Selection, iter_python_files, lint_file  # noqa: E402

PACKAGES = (  # pinned: the verdicts refer to these exact files
    ("accelerate", "1.16.0"),
    ("diffusers", "0.42.1"),
    ("peft", "0.21.2"),
    ("pytorch-lightning", "2.6.6"),
    ("timm", "1.0.31"),
    ("torchtune", "0.6.1"),
)
CONFIGS = {"file": False, "amp": True}
VERDICTS = Path(__file__).resolve().parent / "real_code_verdicts.tsv"
FIELDS = ("package", "path", "line", "code", "configs", "verdict", "why")
TARGET_PRECISION = 0.90


def fetch(name: str, version: str, cache: Path) -> Path:
    """The unpacked wheel of ``name==version`` (downloaded once into ``cache``)."""
    dest = cache / "src" / f"{name}-{version}"
    if dest.is_dir():
        return dest
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
         "--dest", str(wheels), f"{name}=={version}"],
        check=True,
    )
    stem = f"{name.replace('-', '_')}-{version}-"
    (wheel,) = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem.lower())]
    tmp = dest.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp)
    tmp.rename(dest)
    return dest


def lint_package(root: Path, amp: bool) -> tuple[list, int, int]:
    """(findings with paths relative to ``root``, files, lines) for the default code selection."""
    findings, files, lines = [], 0, 0
    for path in iter_python_files([str(root)]):
        if ".dist-info" in path:
            continue
        files += 1
        lines += Path(path).read_bytes().count(b"\n")
        for f in lint_file(path, Selection(), amp=amp):
            findings.append((Path(path).relative_to(root).as_posix(), f))
    return findings, files, lines


def load_verdicts(path: Path = VERDICTS) -> dict[tuple[str, str, int, str], dict]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t")]
    return {(r["package"], r["path"], int(r["line"]), r["code"]): r for r in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="/tmp/training-profiler-real-code", help="where wheels are downloaded and unpacked")
    parser.add_argument("--write-missing", action="store_true", help="append unreviewed findings to the verdict list with verdict '?'")
    args = parser.parse_args(argv)
    cache = Path(args.cache)

    verdicts = load_verdicts()
    seen: dict[tuple[str, str, int, str], dict] = {}
    by_config: dict[str, list] = {c: [] for c in CONFIGS}
    total_files = total_lines = 0
    started = time.perf_counter()
    for name, version in PACKAGES:
        root = fetch(name, version, cache)
        package = f"{name}=={version}"
        for config, amp in CONFIGS.items():
            found, files, lines = lint_package(root, amp)
            if config == "file":
                total_files += files
                total_lines += lines
            counts = Counter(f.code for _, f in found)
            print(f"{package:28s} {config:4s} {files:5d} files {lines:7d} lines  "
                  + (", ".join(f"{code} {n}" for code, n in sorted(counts.items())) or "no findings"))
            for rel, f in found:
                key = (package, rel, f.line, f.code)
                by_config[config].append((key, f))
                row = seen.setdefault(key, {"package": package, "path": rel, "line": f.line, "code": f.code, "configs": [], "finding": f})
                row["configs"].append(config)
    elapsed = time.perf_counter() - started
    print(f"\n{len(PACKAGES)} packages, {total_files} files, {total_lines} lines, linted twice in {elapsed:.1f} s")

    missing = [k for k in seen if k not in verdicts or verdicts[k]["verdict"] not in ("TP", "FP")]
    stale = [k for k in verdicts if k not in seen]
    ok = True
    print(f"\n{'config':6s} {'code':7s} {'severity':8s} {'findings':>8s} {'TP':>4s} {'FP':>4s} {'precision':>9s}")
    for config in (*CONFIGS, "both"):
        items = [(k, f) for c in CONFIGS for k, f in by_config[c]] if config == "both" else by_config[config]
        if config == "both":  # each distinct finding once
            items = list({k: (k, f) for k, f in items}.values())
        per_code: dict[str, Counter] = {}
        for key, f in items:
            verdict = verdicts.get(key, {}).get("verdict", "?")
            per_code.setdefault(f.code, Counter())[verdict] += 1
            per_code[f.code]["severity:" + f.severity.value] += 1
        tp = sum(c["TP"] for c in per_code.values())
        fp = sum(c["FP"] for c in per_code.values())
        for code, c in sorted(per_code.items()):
            severity = next(k.split(":")[1] for k in c if k.startswith("severity:"))
            n = c["TP"] + c["FP"] + c["?"]
            print(f"{config:6s} {code:7s} {severity:8s} {n:8d} {c['TP']:4d} {c['FP']:4d} {c['TP'] / max(1, c['TP'] + c['FP']):9.1%}")
        precision = tp / max(1, tp + fp)
        errors_fp = [k for k, f in items if f.severity is Severity.ERROR and verdicts.get(k, {}).get("verdict") != "TP"]
        print(f"{config:6s} {'all':7s} {'':8s} {len(items):8d} {tp:4d} {fp:4d} {precision:9.1%}"
              f"   errors not TP: {len(errors_fp)}\n")
        ok &= precision >= TARGET_PRECISION and not errors_fp

    if stale:
        print(f"{len(stale)} reviewed finding(s) no longer reported (remove them from {VERDICTS.name}):")
        for key in stale:
            print("  ", *key)
    if missing:
        print(f"{len(missing)} finding(s) without a verdict:")
        for key in missing:
            print("  ", *key, "|", seen[key]["finding"].message)
        if args.write_missing:
            new_file = not VERDICTS.is_file()
            with VERDICTS.open("a", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
                if new_file:
                    writer.writerow(FIELDS)
                for key in missing:
                    row = seen[key]
                    writer.writerow([row["package"], row["path"], row["line"], row["code"], "+".join(row["configs"]), "?", row["finding"].message])
            print(f"appended to {VERDICTS}")
    ok &= not missing and not stale
    print("targets met: precision >= 90% in every configuration, every error a true positive, every finding reviewed"
          if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
