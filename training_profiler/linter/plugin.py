"""flake8 entry point (``flake8.extension``: ``AMP``).

flake8 has already parsed the file: the plugin reuses that ``ast`` tree, so its cost is one
traversal. Info-level codes are added to flake8's default ignore list (enable them with
``--extend-select AMP203``). A rule that raises becomes one AMP000 line for the file: flake8 would
otherwise abort the whole run.
"""

from __future__ import annotations

import ast
from typing import Iterator

from .. import __version__
from ..findings import Finding, Severity
from .engine import amp_option, analyze
from .rules import all_detectors, all_rules


def flake8_message(finding: Finding) -> str:
    """``AMP301 [error] message``: flake8 prints the code first; the severity stays visible."""
    return f"{finding.code} [{finding.severity.value}] {finding.message}"


class AmpPlugin:
    name = "training-profiler"
    version = __version__

    def __init__(self, tree: ast.Module, filename: str = "<stdin>", lines: list[str] | None = None):
        self.tree = tree
        self.filename = filename
        self.lines = lines

    amp: bool | str = False  # from flake8's options: the precision the package trains in

    @classmethod
    def add_options(cls, option_manager) -> None:
        option_manager.extend_default_ignore([r.code for r in all_rules() if r.severity is Severity.INFO])
        option_manager.add_option(
            "--amp", default=None, parse_from_config=True, choices=("fp16", "bf16", "true", "false"),
            help="the package trains in this precision (amp = fp16, bf16 or true in the config): report "
                 "AMP301/AMP401-AMP403 as errors and warnings in every file, not only in files that use AMP",
        )

    @classmethod
    def parse_options(cls, options) -> None:
        value = getattr(options, "amp", None)
        value = {"true": True, "false": False, "": False}.get(str(value).strip().lower(), value) if value is not None else False
        try:
            amp_option(value)
        except ValueError as exc:  # a bad config value: one line on stderr, not a traceback
            raise SystemExit(f"flake8 --amp: {exc}") from None
        cls.amp = value

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        if self.lines is None:
            source = ast.unparse(self.tree)
            lines = source.splitlines()
        else:
            source = "".join(self.lines)
            lines = [line.rstrip("\r\n") for line in self.lines]
        enabled = {r.code for r in all_rules()}  # flake8 applies --select / --ignore itself
        try:
            findings = analyze(self.tree, source, self.filename, all_detectors(), enabled, lines, amp=self.amp)
        except Exception as exc:  # pragma: no cover - analyze already isolates rule errors
            from .engine import AMP000
            from ..findings import Location

            findings = [AMP000.finding(Location(self.filename, 1, 1), detail=f"{type(exc).__name__}: {exc}")]
        for f in findings:
            yield (f.line or 1, max(0, (f.col or 1) - 1), flake8_message(f), type(self))
