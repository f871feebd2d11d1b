"""fx_audit: capture a model's graph, count params/FLOPs, simulate training-step memory, flag
architecture problems. Needs torch (imported lazily by the engine modules, not here)."""

from __future__ import annotations

import importlib
from typing import Any

from .records import AuditReport, AuditTotals, CaptureInfo, LayerRecord, MemoryReport, TensorInfo

# public name -> engine module; loaded on first use so that the records stay torch-free
_LAZY = {"audit": ".engine", "build_model": ".capture"}

__all__ = ["AuditReport", "AuditTotals", "CaptureInfo", "LayerRecord", "MemoryReport", "TensorInfo", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'training_profiler.fx_audit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
