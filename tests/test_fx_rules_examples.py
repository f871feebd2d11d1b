"""Every audit rule's own bad/good example models, audited end to end (engine + memory + rules)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from training_profiler.fx_audit.review import audit_model  # noqa: E402
from training_profiler.fx_audit.rules import all_rules  # noqa: E402

RULES = all_rules()
BAD = [pytest.param(r, src, id=f"{r.code}-bad{i}") for r in RULES for i, src in enumerate(r.bad)]
GOOD = [pytest.param(r, src, id=f"{r.code}-good{i}") for r in RULES for i, src in enumerate(r.good)]


def run_example(source: str):
    namespace = {"torch": torch, "nn": nn}
    exec(compile(source, "<example>", "exec"), namespace)
    return audit_model(namespace["model"], namespace["inputs"])


@pytest.mark.parametrize("rule,source", BAD)
def test_bad_example_triggers_its_rule(rule, source):
    report = run_example(source)
    assert rule.code in {f.code for f in report.findings}, [f.message for f in report.findings]


@pytest.mark.parametrize("rule,source", GOOD)
def test_good_example_is_clean_of_its_rule(rule, source):
    report = run_example(source)
    assert rule.code not in {f.code for f in report.findings}, [f.message for f in report.findings]
