"""ZeRO: stage 1 with PyTorch's ``ZeroRedundancyOptimizer`` (run on the fake process group),
stages 2 and 3 as DeepSpeed accounts them (formulas: DeepSpeed cannot run here).

``"zero1"`` is DDP (see ``ddp``) plus ``ZeroRedundancyOptimizer(params, optimizer_class=...)``:
its own code partitions the parameters (largest first, each to the rank with the fewest elements
so far), each rank keeps the optimizer state of its partition only, and after the step every
rank broadcasts its partition (``broadcast_`` collectives, counted from the simulation).

``"zero2"`` / ``"zero3"``: DeepSpeed with bf16 (or fp16) mixed precision, partitioned fp32
master weights and optimizer state. Model states per rank, for Ψ parameters, N ranks, Adam:

- stage 2: low-precision parameters 2Ψ (replicated); partitioned: the low-precision gradient
  partition 2Ψ/N and the fp32 gradient partition the step reads 4Ψ/N (grads), fp32 master
  weights 4Ψ/N and Adam's two moments 8Ψ/N (optimizer state): **2Ψ + 18Ψ/N**, plus the
  gradient reduce bucket (``reduce_bucket_size`` = 5e8 elements, at most Ψ) in low precision.
- stage 3: the low-precision parameter partition 2Ψ/N, the fp32 gradient partition 4Ψ/N, master
  weights and moments 12Ψ/N, plus the gathered low-precision parameters of the largest layer L,
  twice (the one computing and the one prefetched): **4L + 18Ψ/N**.

DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs``: 4Ψ + 16Ψ/N without
offload, 2Ψ with the optimizer offloaded; ``estimate_zero3_model_states_mem_needs``: 4L + 18Ψ/N,
4L + 2Ψ/N with the optimizer offloaded) are returned next to ours as a cross-check. Activations
and temporaries come from the single-process simulation of the model in that precision.
This path is validated at formula level only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REDUCE_BUCKET_ELEMENTS", "deepspeed_estimator_bytes", "deepspeed_model_states", "largest_layer_params",
           "zero1_optimizer"]

REDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce_bucket_size
_OPTIMIZER_CLASSES = {"adam": ("Adam", {}), "adamw": ("AdamW", {}), "sgd": ("SGD", {}),
                      "sgd-momentum": ("SGD", {"momentum": 0.9})}
_STATE_BYTES_PER_PARAM = {"adam": 8, "adamw": 8, "sgd": 0, "sgd-momentum": 4}  # fp32 moments per element


def zero1_optimizer(optimizer: str, lr: float = 1e-3):
    """params -> ``ZeroRedundancyOptimizer`` wrapping the named torch optimizer (for-loop
    implementation, as torch picks for CPU tensors)."""
    import torch
    from torch.distributed.optim import ZeroRedundancyOptimizer

    name, extra = _OPTIMIZER_CLASSES[optimizer]

    def make(params):
        return ZeroRedundancyOptimizer(params, optimizer_class=getattr(torch.optim, name), lr=lr, foreach=False,
                                       **extra)

    make.__name__ = optimizer
    return make


def deepspeed_model_states(stage: int, params: int, largest_layer: int, world_size: int, optimizer: str,
                           low_bytes: int = 2, offload: str | None = None) -> dict[str, int]:
    """Per-rank device bytes of DeepSpeed's model states, by category (see the module doc)."""
    n = world_size
    state = _STATE_BYTES_PER_PARAM[optimizer]
    fp32_grads = 4 * params // n
    optimizer_state = (4 + state) * params // n  # fp32 master weights + moments
    if offload == "optimizer":  # master weights, moments and the fp32 gradients live in host memory
        fp32_grads = optimizer_state = 0
    if stage == 2:
        return {"params": low_bytes * params, "grads": low_bytes * params // n + fp32_grads,
                "optimizer_state": optimizer_state, "comm_buffers": low_bytes * min(params, REDUCE_BUCKET_ELEMENTS)}
    return {"params": low_bytes * params // n, "grads": fp32_grads, "optimizer_state": optimizer_state,
            "unsharded_params": 2 * low_bytes * largest_layer}


def deepspeed_estimator_bytes(stage: int, params: int, largest_layer: int, world_size: int,
                              offload: str | None = None) -> int:
    """DeepSpeed's published estimator for the same model (GPU bytes of model states only)."""
    if stage == 2:
        return 2 * params if offload else 4 * params + 16 * params // world_size
    return 4 * largest_layer + (2 * params // world_size if offload else 18 * params // world_size)


def largest_layer_params(model: Any) -> int:
    """DeepSpeed's L: the most parameters any single module holds directly."""
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
