"""JSON view: a list of finding objects (code, severity, path, line, col, message, why, fix, ...)."""

from __future__ import annotations

import json
from typing import Iterable

from ..findings import Finding


def findings_to_json(findings: Iterable[Finding]) -> str:
    return json.dumps([f.to_dict() for f in sorted(findings, key=Finding.sort_key)], indent=2) + "\n"
