"""Safe autofixes: formatting-preserving rewrites with libcst, applied only where the detector
marked a finding ``autofix`` (the rewrite provably keeps the program's meaning).

A detector offers a fix by defining ``fix_transformer(positions)``, returning a
:class:`PositionalFix` subclass instance; ``positions`` holds the (line, column) of each finding
to rewrite (1-based, as reported), so a transformer only touches the nodes a finding points at.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from ..findings import Finding
from .rules import detector_for


class PositionalFix(cst.CSTTransformer):
    """Base transformer: knows the reported positions it is allowed to rewrite."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, positions: set[tuple[int, int]]):
        super().__init__()
        self.positions = positions
        self.applied = 0

    def targeted(self, node: cst.CSTNode) -> bool:
        start = self.get_metadata(PositionProvider, node).start
        return (start.line, start.column + 1) in self.positions


def fix_source(source: str, findings: Iterable[Finding]) -> tuple[str, int]:
    """Apply the safe fixes for ``findings`` to ``source``; returns (new source, fixes applied)."""
    by_code: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for f in findings:
        if f.data.get("autofix") and f.line is not None and f.col is not None:
            by_code[f.code].add((f.line, f.col))
    if not by_code:
        return source, 0
    module = cst.parse_module(source)
    applied = 0
    for code in sorted(by_code):
        detector = detector_for(code)
        make = getattr(detector, "fix_transformer", None)
        if make is None:
            continue
        transformer = make(by_code[code])
        module = MetadataWrapper(module).visit(transformer)
        applied += transformer.applied
    return module.code, applied
