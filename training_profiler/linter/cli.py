"""`training-profiler lint` and `training-profiler rules`.

Options come from the command line, then from ``[tool.training-profiler.lint]`` in the nearest
pyproject.toml (or ``--config``)::

    [tool.training-profiler.lint]
    select = ["AMP"]            # replaces the default set (errors and warnings)
    extend-select = ["AMP203"]  # adds info rules
    ignore = ["AMP201"]
    fail-level = "error"        # exit 1 only for errors
    exclude = ["legacy/*", "*_pb2.py"]
    amp = "fp16"                # the package trains in low precision: "fp16" (or true), "bf16"

Rules that matter only in low precision (AMP301; AMP401-AMP403, which only fp16 breaks) are errors
and warnings in files that use autocast, GradScaler, .half() or bfloat16; elsewhere they become
info-level readiness advice (AMP306, AMP404-AMP406). ``amp`` (or ``--amp fp16|bf16``) says the
whole package runs in low precision, for model files that never mention it themselves.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys

from ..findings import SEVERITY_NAMES, Severity

_CONFIG_KEYS = {"select", "extend-select", "ignore", "fail-level", "exclude", "amp"}


def register(sub: argparse._SubParsersAction) -> None:
    lint = sub.add_parser("lint", help="lint Python files for AMP / low-precision pitfalls")
    lint.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to lint")
    lint.add_argument("--format", choices=("text", "json", "sarif", "markdown"), default="text")
    lint.add_argument("--fix", action="store_true", help="apply the safe autofixes, then lint again")
    lint.add_argument("--select", default=None, help="comma-separated codes or prefixes to run (replaces the default set)")
    lint.add_argument("--extend-select", default=None, help="codes or prefixes to add, e.g. AMP203 (info rules are off by default)")
    lint.add_argument("--ignore", default=None, help="codes or prefixes to skip")
    lint.add_argument("--fail-level", choices=SEVERITY_NAMES, default=None,
                      help="exit 1 when a finding of at least this severity remains (default: warning)")
    lint.add_argument("--amp", choices=("fp16", "bf16"), default=None,
                      help="the package trains in this precision: the rules it breaks report errors in every file")
    lint.add_argument("--config", default=None, help="pyproject.toml to read [tool.training-profiler.lint] from")
    lint.set_defaults(run=run_lint)

    rules = sub.add_parser("rules", help="list every rule with its code, severity and message")
    rules.set_defaults(run=run_rules)


def _codes(value) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(c).strip().upper() for c in items if str(c).strip())


def _options(args: argparse.Namespace):
    """Merge command-line flags over the pyproject.toml table; returns (Selection, fail level, excludes, amp)."""
    from ..inputs import UsageError
    from ..config import load_tool_config
    from .api import Selection
    from .engine import amp_option
    from .rules import all_rules

    try:
        table, source = load_tool_config("lint", args.config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    unknown = sorted(set(table) - _CONFIG_KEYS)
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)} in [tool.training-profiler.lint]; "
                         f"known keys: {', '.join(sorted(_CONFIG_KEYS))}")

    def pick(flag, key):
        return _codes(flag if flag is not None else table.get(key))

    selection = Selection(pick(args.select, "select"), pick(args.extend_select, "extend-select"), pick(args.ignore, "ignore"))
    known = {r.code for r in all_rules()}
    for prefix in (*selection.select, *selection.extend_select, *selection.ignore):
        if not any(code.startswith(prefix) for code in known):
            raise UsageError(f"{prefix!r} matches no rule code; `training-profiler rules` lists them")
    try:
        fail_level = Severity.parse(args.fail_level or table.get("fail-level", "warning"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    exclude = table.get("exclude", [])
    if isinstance(exclude, str):
        exclude = [exclude]
    amp = table.get("amp", False) if args.amp is None else args.amp
    try:
        amp_option(amp)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc} in [tool.training-profiler.lint]") from None
    return selection, fail_level, list(exclude), amp


def _excluded(path: str, patterns: list[str]) -> bool:
    norm = path.replace(os.sep, "/")
    return any(fnmatch.fnmatch(norm, p) or fnmatch.fnmatch(os.path.basename(norm), p) or f"/{p.strip('/')}/" in f"/{norm}" for p in patterns)


def run_lint(args: argparse.Namespace) -> int:
    from ..inputs import UsageError
    from ..formats import render
    from .api import iter_python_files, lint_file, read_source
    from .fixes import fix_source
    from .rules import all_rules

    selection, fail_level, exclude, amp = _options(args)
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    findings = []
    for path in iter_python_files(args.paths):
        if exclude and _excluded(path, exclude):
            continue
        found = lint_file(path, selection, amp=amp)
        if args.fix and any(f.data.get("autofix") for f in found):
            found = _fix_file(path, found, selection, amp, read_source, fix_source, lint_file)
        findings.extend(found)
    sys.stdout.write(render(findings, args.format, rules=all_rules(), tool_name="training-profiler lint"))
    return 1 if any(f.severity.rank >= fail_level.rank for f in findings) else 0


def _fix_file(path, found, selection, amp, read_source, fix_source, lint_file):
    """Apply the safe fixes to one file and lint it again; a fixer failure keeps the findings."""
    import io
    import tokenize

    try:
        source = read_source(path)
        new_source, applied = fix_source(source, found)
        with open(path, "rb") as fh:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(fh.read()).readline)
    except Exception as exc:
        print(f"could not fix {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return found
    if not applied:
        return found
    with open(path, "w", encoding=encoding, newline="") as fh:  # keep the file's own encoding
        fh.write(new_source)
    print(f"fixed {applied} finding{'s' if applied != 1 else ''} in {path}", file=sys.stderr)
    return lint_file(path, selection, amp=amp)


def run_rules(args: argparse.Namespace) -> int:
    from ..formats.rules_doc import every_rule

    for rule in every_rule():
        print(f"{rule.code}  {rule.severity.value:<7}  {rule.message}")
    return 0
