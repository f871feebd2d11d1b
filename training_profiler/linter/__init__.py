"""AMP-safety linter: a flake8 plugin and a standalone CLI over one engine. Never imports torch."""

from __future__ import annotations

from .api import Selection, lint_file, lint_paths, lint_source
from .rules import all_rules

__all__ = ["Selection", "lint_file", "lint_paths", "lint_source", "all_rules"]
