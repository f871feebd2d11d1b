"""fx_audit: capture a model's graph, count params/FLOPs, simulate training-step memory, flag
architecture problems. Needs torch (imported lazily by the engine modules, not here)."""

from __future__ import annotations

from .records import AuditReport, CaptureInfo, LayerRecord, MemoryReport, TensorInfo

__all__ = ["AuditReport", "CaptureInfo", "LayerRecord", "MemoryReport", "TensorInfo"]
