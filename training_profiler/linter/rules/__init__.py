"""The rule registry. Each module below defines LintRule subclasses; one grep for a code finds
its metadata, its examples and the logic that decides and reports it together in the same file
(``tests/test_linter_layout.py`` checks it). Helpers that several rule modules need live in
``_common.py``: rule modules never import each other.

Codes: AMP1xx autocast scope and API, AMP2xx manual casts, AMP3xx ops unsafe in low precision,
AMP4xx constants, AMP5xx GradScaler protocol.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from ...findings import Rule
from ..engine import AMP000, LintRule

_RULE_MODULES = (
    "training_profiler.linter.rules.autocast",  # AMP101-AMP104
    "training_profiler.linter.rules.casts",  # AMP201-AMP203
    "training_profiler.linter.rules.ops",  # AMP301-AMP305
    "training_profiler.linter.rules.constants",  # AMP401-AMP403
    "training_profiler.linter.rules.gradscaler",  # AMP501-AMP506
)


@lru_cache(maxsize=None)
def all_detectors() -> tuple[LintRule, ...]:
    """One instance of every detector, in a stable order."""
    detectors = []
    for name in _RULE_MODULES:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, LintRule) and obj is not LintRule and obj.rules:
                detectors.append(obj())
    return tuple(sorted(detectors, key=lambda d: d.codes[0]))


@lru_cache(maxsize=None)
def all_rules() -> tuple[Rule, ...]:
    """Metadata of every code, AMP000 included, sorted by code."""
    rules = {AMP000.code: AMP000}
    for detector in all_detectors():
        for rule in detector.rules:
            if rule.code in rules:
                raise RuntimeError(f"rule code {rule.code} is defined twice")
            rules[rule.code] = rule
    return tuple(rules[c] for c in sorted(rules))


def detector_for(code: str) -> LintRule | None:
    for detector in all_detectors():
        if code in detector.codes:
            return detector
    return None
