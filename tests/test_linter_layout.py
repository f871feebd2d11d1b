"""One rule is one unit: ``grep -n AMP403`` in the rule's module lands on its metadata, its
examples and the logic that decides and reports it, together (as ruff and fixit lay out rules)."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest

from training_profiler.linter.rules import _RULE_MODULES, all_rules, detector_for

# Lines of other code (helper tables, autofix examples) allowed between the end of a code's
# Rule(...) and the start of the function or class that reports it. Other Rule(...) assignments
# in between (a readiness twin, a sibling code sharing the detector) do not count.
MAX_GAP = 40

CODES = [rule.code for rule in all_rules() if rule.code != "AMP000"]


def _module_tree(code: str) -> tuple[str, ast.Module]:
    module = inspect.getmodule(type(detector_for(code)))
    return module.__name__, ast.parse(inspect.getsource(module))


def _rule_assignments(tree: ast.Module) -> dict[str, ast.Assign]:
    found = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call) and getattr(stmt.value.func, "id", None) == "Rule":
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = stmt
    return found


def _reports(stmt: ast.stmt, code: str) -> bool:
    """``stmt`` holds a ``ctx.report...(...)`` call that names ``code`` among its arguments
    (``report(AMP303 if ... else AMP305, ...)`` names both)."""
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("report"):
            if any(isinstance(n, ast.Name) and n.id == code for arg in node.args for n in ast.walk(arg)):
                return True
    return False


def _nearest_reporter(tree: ast.Module, code: str) -> tuple[ast.stmt | None, int]:
    """The top-level function or class below ``code``'s Rule that reports it, nearest first, and
    how many lines of other code (not counting other Rule assignments) lie between the two."""
    rules = _rule_assignments(tree)
    rule = rules[code]
    twins = [r for r in rules.values() if r is not rule]

    def gap(reporter: ast.stmt) -> int:
        between = reporter.lineno - rule.end_lineno - 1
        return between - sum(t.end_lineno - t.lineno + 1 for t in twins if rule.end_lineno < t.lineno < reporter.lineno)

    after = [s for s in tree.body if isinstance(s, (ast.FunctionDef, ast.ClassDef)) and s.lineno > rule.end_lineno and _reports(s, code)]
    if not after:
        return None, -1
    nearest = min(after, key=gap)
    return nearest, gap(nearest)


@pytest.mark.parametrize("code", CODES)
def test_rule_metadata_and_reporting_logic_sit_together(code):
    name, tree = _module_tree(code)
    rules = _rule_assignments(tree)
    assert code in rules, f"{code}'s Rule is not defined in {name}, the module of its detector"
    reporter, gap = _nearest_reporter(tree, code)
    assert reporter is not None, f"nothing in {name} below {code}'s Rule (line {rules[code].lineno}) reports it"
    assert gap <= MAX_GAP, (
        f"{name}: {code}'s Rule ends on line {rules[code].end_lineno} but {reporter.name}, which reports it, "
        f"starts on line {reporter.lineno}: {gap} lines of other code in between (at most {MAX_GAP})"
    )


def test_the_layout_check_measures_what_it_claims():
    """A hand-made module: AMP901's reporter follows its Rule after 2 other lines and a 3-line
    twin; AMP902 is reported only above its Rule."""
    tree = ast.parse(
        "AMP901 = Rule(code='AMP901')\n"  # 1
        "AMP903 = Rule(\n"  # 2
        "    code='AMP903',\n"  # 3
        ")\n"  # 4
        "_TABLE = {}\n"  # 5
        "_OTHER = {}\n"  # 6
        "def _amp901(ctx, node):\n"  # 7
        "    ctx.report_tiered(AMP901, AMP903, node)\n"
        "def _amp902(ctx, node):\n"
        "    ctx.report(AMP902 if node else AMP901, node)\n"
        "AMP902 = Rule(code='AMP902')\n"
    )
    rules = _rule_assignments(tree)
    assert sorted(rules) == ["AMP901", "AMP902", "AMP903"]
    assert (rules["AMP901"].end_lineno, rules["AMP903"].lineno, rules["AMP903"].end_lineno) == (1, 2, 4)
    functions = [s for s in tree.body if isinstance(s, ast.FunctionDef)]
    assert [f.name for f in functions if _reports(f, "AMP901")] == ["_amp901", "_amp902"]
    assert [f.name for f in functions if _reports(f, "AMP902")] == ["_amp902"]
    assert [f.name for f in functions if _reports(f, "AMP903")] == ["_amp901"]
    reporter, gap = _nearest_reporter(tree, "AMP901")
    assert (reporter.name, gap) == ("_amp901", 2)  # lines 5 and 6; the twin on lines 2-4 does not count
    assert _nearest_reporter(tree, "AMP902") == (None, -1)


@pytest.mark.parametrize("name", _RULE_MODULES)
def test_rule_modules_do_not_import_each_other(name):
    """Helpers two rule modules need live in ``rules/_common.py``; a rule module never imports
    another rule module (so each can be read, moved and tested as one unit)."""
    tree = ast.parse(inspect.getsource(importlib.import_module(name)))
    siblings = {m.rsplit(".", 1)[1] for m in _RULE_MODULES}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            imported.add((node.module or "").split(".")[0])
            if not node.module:
                imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("training_profiler.linter.rules."):
            imported.add(node.module.split(".")[3])
    assert not imported & siblings, f"{name} imports {sorted(imported & siblings)}: move the shared helpers to rules/_common.py"
