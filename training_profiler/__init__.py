"""training-profiler: catch the mistakes that silently ruin PyTorch training runs.

Three parts: ``linter`` (AMP-safety flake8 plugin, torch-free), ``fx_audit`` (graph auditor) and
``runtime`` (training monitor, tensor precision analysis). Importing this package never imports
torch: the torch-backed names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .findings import Finding, Location, Rule, Severity

__version__ = "0.1.0"

# public name -> module that defines it; imported lazily so the linter works without torch
_LAZY = {
    "audit": "training_profiler.fx_audit",
    "watch_training": "training_profiler.runtime",
    "analyze_tensor": "training_profiler.runtime",
    "compare_precision": "training_profiler.runtime",
}

__all__ = ["Finding", "Location", "Rule", "Severity", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'training_profiler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
