"""Per-rank memory plans for distributed training: DDP, ZeroRedundancyOptimizer (``"zero1"``),
FSDP2 (``"fsdp"``) run by PyTorch's own code on a fake process group, DeepSpeed ZeRO-2/3 by
formula. Entry point: ``audit(model, inputs, parallel=..., world_size=...)``; see docs/distributed.md."""

from __future__ import annotations

from .plan import STRATEGIES, check_parallel_options, simulate_parallel_step

__all__ = ["STRATEGIES", "check_parallel_options", "simulate_parallel_step"]
