"""runtime: the training monitor (`watch_training`) and tensor precision analysis
(`analyze_tensor`, `compare_precision`). Needs torch; importing this package does not import it
until one of the names below is used."""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_LAZY = {
    "watch_training": "training_profiler.runtime.monitor",
    "TrainingMonitor": "training_profiler.runtime.monitor",
    "Alert": "training_profiler.runtime.alerts",
    "TrainingAlertError": "training_profiler.runtime.alerts",
    "analyze_tensor": "training_profiler.runtime.precision",
    "compare_precision": "training_profiler.runtime.precision",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'training_profiler.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
