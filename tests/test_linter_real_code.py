"""Precision on real code: re-lint a pinned subset of published packages and compare with the
hand-reviewed verdicts of bench/real_code_precision.py (bench/real_code_verdicts.tsv).

A finding that is not in the reviewed list fails the test (review it: add a verdict, or fix the
rule); a listed true positive that is no longer reported fails it too (a rule lost recall)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training_profiler.findings import Severity
from training_profiler.linter.api import Selection, lint_file

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "real_code"
VERDICTS = REPO / "bench" / "real_code_verdicts.tsv"
CONFIGS = {"file": False, "amp": True}  # as in the bench: no configuration, then amp = true


def _verdicts() -> dict[tuple[str, str, int, str], dict]:
    with VERDICTS.open(encoding="utf-8", newline="") as fh:
        rows = csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t")
        return {(r["package"], r["path"], int(r["line"]), r["code"]): r for r in rows}


def _fixture_files() -> list[tuple[str, str, Path]]:
    """(package==version, path inside the wheel, file) for every pinned file."""
    out = []
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        name, version = folder.name.rsplit("-", 1)
        for path in sorted(folder.rglob("*.py")):
            out.append((f"{name}=={version}", path.relative_to(folder).as_posix(), path))
    return out


FILES = _fixture_files()


def test_the_pinned_subset_covers_four_packages():
    assert len({package for package, _, _ in FILES}) == 4 and len(FILES) == 8


@pytest.mark.parametrize("package, rel, path", FILES, ids=[f"{p}:{r}" for p, r, _ in FILES])
def test_real_code_findings_are_exactly_the_reviewed_ones(package, rel, path):
    verdicts = _verdicts()
    reviewed = {key: row for key, row in verdicts.items() if key[:2] == (package, rel)}
    for config, amp in CONFIGS.items():
        found = {(package, rel, f.line, f.code): f for f in lint_file(str(path), Selection(), amp=amp)}
        unreviewed = sorted(set(found) - set(reviewed))
        assert not unreviewed, f"[{config}] findings without a verdict in {VERDICTS.name}: {unreviewed}"
        expected = {k for k, row in reviewed.items() if config in row["configs"].split("+")}
        assert set(found) == expected, f"[{config}] reviewed findings no longer reported: {sorted(expected - set(found))}"
        for key, finding in found.items():  # every error-level finding is a true positive
            assert finding.severity is not Severity.ERROR or reviewed[key]["verdict"] == "TP", key


def test_the_pinned_subset_holds_true_and_false_positives():
    verdicts = _verdicts()
    pinned = {(package, rel) for package, rel, _ in FILES}
    mine = [row["verdict"] for key, row in verdicts.items() if key[:2] in pinned]
    assert mine.count("TP") == 7 and mine.count("FP") == 2
