"""Python API of the linter: lint source text, files and folders; select and ignore codes."""

from __future__ import annotations

import ast
import io
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..findings import Finding, Location, Severity
from .engine import AMP000, amp_option, analyze, is_suppressed
from .rules import all_detectors, all_rules

__all__ = ["Selection", "lint_source", "lint_file", "lint_paths", "iter_python_files"]

# Files larger than this are almost always generated (protobuf, vendored bundles): not analysed.
MAX_FILE_BYTES = 5 * 1024 * 1024
_SKIP_DIRS = {".git", ".hg", ".svn", ".tox", ".nox", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", "build", "dist", ".eggs"}


@dataclass(frozen=True)
class Selection:
    """Which codes run, flake8-style: prefixes in ``select`` replace the default set
    (errors and warnings), ``extend_select`` adds to it, ``ignore`` removes from it."""

    select: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def enabled(self) -> set[str]:
        codes = [r.code for r in all_rules()]
        if self.select:
            chosen = {c for c in codes if any(c.startswith(p) for p in self.select)}
        else:
            chosen = {r.code for r in all_rules() if r.severity is not Severity.INFO}
        chosen |= {c for c in codes if any(c.startswith(p) for p in self.extend_select)}
        chosen -= {c for c in codes if any(c.startswith(p) for p in self.ignore)}
        chosen.add(AMP000.code)  # analysis failures are always reported
        return chosen


def _error(path: str, detail: str, line: int = 1) -> list[Finding]:
    return [AMP000.finding(Location(path, line, 1), detail=detail)]


def lint_source(source: str, path: str = "<string>", selection: Selection = Selection(), noqa: bool = True,
                amp: bool | str = False) -> list[Finding]:
    """Findings for one module's source text (never raises for bad source: AMP000 instead).

    ``amp``: the package trains in low precision (``True`` or ``"fp16"``; ``"bf16"``), so the rules
    that matter only there (AMP301, and for fp16 AMP401-AMP403) report errors and warnings even in
    files that never mention it; otherwise such files get info-level readiness advice (AMP306,
    AMP404-AMP406). A value other than these raises ValueError."""
    amp_option(amp)  # bad input is the caller's error, not an AMP000 finding
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return _error(path, f"SyntaxError: {exc.msg}", exc.lineno or 1)
    except (ValueError, RecursionError, MemoryError) as exc:
        return _error(path, f"{type(exc).__name__}: {exc}")
    lines = source.splitlines()
    findings = analyze(tree, source, path, all_detectors(), selection.enabled(), lines, amp=amp)
    if noqa:
        findings = [f for f in findings if not is_suppressed(f, lines)]
    return findings


def read_source(path: str) -> str:
    """Decode a Python file honouring its PEP 263 coding cookie.

    Raises ValueError with a readable reason for binary, undecodable or oversized files.
    """
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"file is {size / 2**20:.1f} MiB, larger than the {MAX_FILE_BYTES // 2**20} MiB limit (generated code?)")
    data = Path(path).read_bytes()
    if b"\0" in data:
        raise ValueError("binary file (contains NUL bytes)")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a text file in a known encoding ({exc})") from None


def lint_file(path: str, selection: Selection = Selection(), amp: bool | str = False) -> list[Finding]:
    try:
        source = read_source(path)
    except (OSError, ValueError) as exc:
        return _error(path, str(exc))
    return lint_source(source, path, selection, amp=amp)


def iter_python_files(paths: Iterable[str]) -> Iterator[str]:
    """Python files under ``paths`` in a stable order (folders walked, VCS/venv dirs skipped)."""
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
                for name in sorted(files):
                    if name.endswith((".py", ".pyi")):
                        yield os.path.join(root, name)
        else:
            yield path


def lint_paths(paths: Sequence[str], selection: Selection = Selection(), amp: bool | str = False) -> list[Finding]:
    """Lint every Python file under ``paths``; one broken file never stops the others."""
    findings: list[Finding] = []
    for path in iter_python_files(paths):
        findings.extend(lint_file(path, selection, amp=amp))
    return findings
