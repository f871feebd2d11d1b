"""The one Finding record shared by every product, and the rule metadata it comes from.

The linter and the graph auditor both produce :class:`Finding` objects; every output format
(flake8 lines, the grouped text report, JSON, SARIF, Markdown) is a view of these records.
A :class:`Rule` carries everything a user needs to act on a finding (the five questions of a
ruff rule page: what, why, example, use instead, references), so the docs are generated from it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["SEVERITY_NAMES", "Severity", "Location", "Finding", "Rule"]


class Severity(str, enum.Enum):
    """How bad a finding is. Ordered: ``ERROR > WARNING > INFO``. These three words are the one
    vocabulary of every view (flake8, text, JSON, SARIF, Markdown) and of ``--fail-level``."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]

    @property
    def label(self) -> str:
        """The word the views print: the value (``error``, ``warning``, ``info``)."""
        return self.value

    @classmethod
    def parse(cls, text: str) -> "Severity":
        """``"error"``; the 0.1 report words ``high``/``medium``/``low`` are accepted as aliases."""
        word = str(text).strip().lower()
        try:
            return cls(_ALIASES.get(word, word))
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown severity {text!r}: use one of {names}") from None

    def __str__(self) -> str:
        return self.value


_ALIASES = {"high": "error", "medium": "warning", "low": "info"}  # the labels of 0.1's text report

# what --fail-level accepts: the severities, then the old aliases
SEVERITY_NAMES = (*(s.value for s in Severity), *_ALIASES)


@dataclass(frozen=True)
class Location:
    """Where a finding points: a source position (linter) and/or a model node (auditor)."""

    path: str | None = None
    line: int | None = None
    col: int | None = None  # 1-based, as flake8 prints it
    module: str | None = None  # qualified module path inside a model, e.g. "encoder.layers.3"
    node: str | None = None  # fx graph node name

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __str__(self) -> str:
        parts = []
        if self.path:
            pos = self.path
            if self.line is not None:
                pos += f":{self.line}"
                if self.col is not None:
                    pos += f":{self.col}"
            parts.append(pos)
        if self.module:
            parts.append(f"module '{self.module}'")
        return " ".join(parts) or "<unknown>"


@dataclass(frozen=True)
class Finding:
    """One actionable problem: what is wrong, where, why it matters and what to do."""

    code: str
    severity: Severity
    message: str  # one line, says what is wrong and what to do
    location: Location = field(default_factory=Location)
    why: str = ""
    fix: str = ""
    references: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)  # the numbers that triggered it

    @property
    def path(self) -> str | None:
        return self.location.path

    @property
    def line(self) -> int | None:
        return self.location.line

    @property
    def col(self) -> int | None:
        return self.location.col

    def sort_key(self) -> tuple:
        loc = self.location
        return (loc.path or "", loc.line or 0, loc.col or 0, loc.module or "", self.code)

    def to_dict(self) -> dict[str, Any]:
        loc = self.location
        out: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity.value,
            "path": loc.path,
            "line": loc.line,
            "col": loc.col,
            "message": self.message,
            "why": self.why,
            "fix": self.fix,
            "references": list(self.references),
        }
        if loc.module is not None:
            out["module"] = loc.module
        if loc.node is not None:
            out["node"] = loc.node
        if self.data:
            out["data"] = dict(self.data)
        return out


@dataclass(frozen=True)
class Rule:
    """Metadata of one rule; linter rules and audit rules share it.

    ``message`` is the one-line text shown for a finding; it may contain ``{placeholders}`` that
    the detector fills in. ``bad`` and ``good`` are source snippets that the generic rule test
    runs: every ``bad`` example must trigger exactly this rule, no ``good`` example may.
    """

    code: str
    name: str
    severity: Severity
    message: str
    why: str
    fix: str
    references: tuple[str, ...] = ()
    bad: tuple[str, ...] = ()
    good: tuple[str, ...] = ()

    def finding(self, location: Location, data: Mapping[str, Any] | None = None, **fmt: Any) -> Finding:
        """A Finding of this rule at ``location``; ``fmt`` fills the message placeholders."""
        message = self.message.format(**fmt) if fmt else self.message
        return Finding(
            code=self.code,
            severity=self.severity,
            message=message,
            location=location,
            why=self.why,
            fix=self.fix,
            references=self.references,
            data=dict(data or {}),
        )
