"""Per-rank memory plans for distributed training: DDP, ZeroRedundancyOptimizer (``"zero1"``),
FSDP2 (``"fsdp"``) run by PyTorch's own code on a fake process group, DeepSpeed ZeRO-2/3 by
formula. Entry points: ``audit(model, inputs, parallel=..., world_size=...)`` and
``plan_strategies`` (``training-profiler plan``); see docs/distributed.md."""

from __future__ import annotations

from .plan import VARIANTS, Plan, PlanRow, advise_checkpointing, plan_strategies, render_plan
from .simulate import STRATEGIES, check_parallel_options, reusing_simulations, simulate_parallel_step

__all__ = ["STRATEGIES", "VARIANTS", "Plan", "PlanRow", "advise_checkpointing", "check_parallel_options",
           "plan_strategies", "render_plan", "reusing_simulations", "simulate_parallel_step"]
