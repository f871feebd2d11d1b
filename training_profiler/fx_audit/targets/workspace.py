"""The record every target's table is made of (kept apart from the dispatch in ``__init__``, which
imports the tables: a table importing its record from there would be a cycle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["WorkspaceRule"]


@dataclass(frozen=True)
class WorkspaceRule:
    """Bytes one aten op allocates beyond what its fake outputs show.

    ``estimate(args, outputs)`` returns ``({output index: real bytes of that output}, transient
    bytes alive only while the op runs)``; ``source`` says where the formula comes from (a
    measurement script and its data, or the library's code); ``exact`` is False for fitted
    envelopes, which make the report's confidence "low"."""

    op: str
    estimate: Callable
    source: str
    exact: bool = True
