"""The generic rule test: every rule's own bad/good examples and autofix examples.

Each bad example marks the line(s) where a finding must be reported with ``# expect: CODE``;
the test asserts exactly those lines for that code, so an example documents and tests at once.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training_profiler.formats.rules_doc import every_rule, render_rules_markdown
from training_profiler.linter.api import Selection, lint_source
from training_profiler.linter.fixes import fix_source
from training_profiler.linter.rules import all_detectors, all_rules

ALL = Selection(select=("AMP",))
_EXPECT = re.compile(r"# expect: ([A-Z0-9, ]+)$")


def expected_lines(source: str, code: str) -> list[int]:
    lines = []
    for number, line in enumerate(source.splitlines(), 1):
        match = _EXPECT.search(line)
        if match and code in {c.strip() for c in match.group(1).split(",")}:
            lines.append(number)
    return lines


RULES = [r for r in all_rules() if r.code != "AMP000"]
BAD = [pytest.param(r, src, id=f"{r.code}-bad{i}") for r in RULES for i, src in enumerate(r.bad)]
GOOD = [pytest.param(r, src, id=f"{r.code}-good{i}") for r in RULES for i, src in enumerate(r.good)]
FIXES = [
    pytest.param(d, before, after, id=f"{d.codes[0]}-fix{i}")
    for d in all_detectors()
    for i, (before, after) in enumerate(getattr(d, "autofix_examples", ()))
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.code)
def test_rule_is_documented_with_examples(rule):
    assert re.fullmatch(r"AMP[1-9]\d\d", rule.code)
    assert rule.message and rule.why and rule.fix and rule.references
    assert len(rule.bad) >= 2 and len(rule.good) >= 2, "each rule needs two bad and two good examples"


@pytest.mark.parametrize("rule,source", BAD)
def test_bad_example_fires_on_marked_lines(rule, source):
    findings = lint_source(source, "example.py", ALL)
    assert not [f for f in findings if f.code == "AMP000"], findings
    want = expected_lines(source, rule.code)
    assert want, "bad examples must mark the expected line with '# expect: CODE'"
    assert [f.line for f in findings if f.code == rule.code] == want


@pytest.mark.parametrize("rule,source", GOOD)
def test_good_example_is_clean(rule, source):
    findings = lint_source(source, "example.py", ALL)
    assert [f for f in findings if f.code in (rule.code, "AMP000")] == []


@pytest.mark.parametrize("detector,before,after", FIXES)
def test_autofix_example(detector, before, after):
    findings = lint_source(before, "example.py", ALL)
    fixed, applied = fix_source(before, findings)
    assert fixed == after
    assert applied >= 1
    assert not [f for f in lint_source(fixed, "example.py", ALL) if f.code in detector.codes]


def test_docs_rules_md_is_current():
    committed = Path(__file__).resolve().parent.parent / "docs" / "rules.md"
    assert committed.read_text(encoding="utf-8") == render_rules_markdown(every_rule()), (
        "docs/rules.md is stale: run `python -m training_profiler.formats.rules_doc > docs/rules.md`"
    )
