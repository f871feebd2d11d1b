"""runtime: the training monitor (`watch_training`) and tensor precision analysis
(`analyze_tensor`, `compare_precision`). Needs torch, imported on first use of a name below."""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it; loaded lazily so `runtime.cli` imports without torch
_LAZY = {
    "analyze_tensor": "training_profiler.runtime.precision",
    "compare_precision": "training_profiler.runtime.precision",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'training_profiler.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
