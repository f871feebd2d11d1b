"""`training-profiler lint` and `training-profiler rules`."""

from __future__ import annotations

import argparse
import sys

from ..findings import Severity


def register(sub: argparse._SubParsersAction) -> None:
    lint = sub.add_parser("lint", help="lint Python files for AMP / low-precision pitfalls")
    lint.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to lint")
    lint.add_argument("--format", choices=("text", "json", "sarif", "markdown"), default="text")
    lint.add_argument("--fix", action="store_true", help="apply the safe autofixes, then lint again")
    lint.add_argument("--select", default="", help="comma-separated codes or prefixes to run (replaces the default set)")
    lint.add_argument("--extend-select", default="", help="codes or prefixes to add, e.g. AMP203 (info rules are off by default)")
    lint.add_argument("--ignore", default="", help="codes or prefixes to skip")
    lint.add_argument("--fail-level", choices=[s.value for s in Severity], default=None,
                      help="exit 1 when a finding of at least this severity remains (default: warning)")
    lint.add_argument("--config", default=None, help="pyproject.toml to read [tool.training-profiler.lint] from")
    lint.set_defaults(run=run_lint)

    rules = sub.add_parser("rules", help="list every rule with its code, severity and message")
    rules.add_argument("--format", choices=("text", "markdown"), default="text")
    rules.set_defaults(run=run_rules)


def _codes(text: str) -> tuple[str, ...]:
    return tuple(c.strip().upper() for c in text.split(",") if c.strip())


def run_lint(args: argparse.Namespace) -> int:
    from ..formats import render
    from .api import Selection, iter_python_files, lint_file
    from .fixes import fix_source
    from .api import read_source
    from .rules import all_rules

    selection = Selection(_codes(args.select), _codes(args.extend_select), _codes(args.ignore))
    fail_level = Severity.parse(args.fail_level or "warning")
    findings = []
    for path in iter_python_files(args.paths):
        found = lint_file(path, selection)
        if args.fix and any(f.data.get("autofix") for f in found):
            try:
                source = read_source(path)
                new_source, applied = fix_source(source, found)
                if applied:
                    with open(path, "w", encoding="utf-8", newline="") as fh:
                        fh.write(new_source)
                    print(f"fixed {applied} finding{'s' if applied != 1 else ''} in {path}", file=sys.stderr)
                    found = lint_file(path, selection)
            except Exception as exc:  # a fixer failure must not lose the findings
                print(f"could not fix {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        findings.extend(found)
    sys.stdout.write(render(findings, args.format, rules=all_rules(), tool_name="training-profiler lint"))
    return 1 if any(f.severity.rank >= fail_level.rank for f in findings) else 0


def run_rules(args: argparse.Namespace) -> int:
    from ..formats.rules_doc import every_rule

    for rule in every_rule():
        print(f"{rule.code}  {rule.severity.value:<7}  {rule.message}")
    return 0
