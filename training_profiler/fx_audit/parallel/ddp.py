"""DDP as ``DistributedDataParallel(model)`` builds it by default (``bucket_cap_mb=25``,
``gradient_as_bucket_view=False``).

DDP's Reducer cannot run on fake tensors (it reads tensor data in C++), so the model itself runs
unwrapped, and what DDP adds is allocated next to it: its gradient buckets. DDP assigns the
parameters to buckets with its own C++ function (``dist._compute_bucket_assignment_by_size``,
first bucket ``dist._DEFAULT_FIRST_BUCKET_BYTES`` = 1 MiB, then ``bucket_cap_mb``) and allocates
one flat tensor per bucket at construction (``Reducer::initialize_buckets``); with
``gradient_as_bucket_view=False`` the gradients stay separate tensors and are copied into the
buckets, all-reduced in place and copied back. So each rank holds its parameters, gradients and
optimizer state in full plus one bucket byte per gradient byte, alive for the whole run, and
all-reduces every gradient byte once per step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

__all__ = ["DDPEngine", "bucket_sizes"]

BUCKET_CAP_MB = 25


def bucket_sizes(params: list, bucket_cap_mb: int = BUCKET_CAP_MB) -> list[tuple[int, Any]]:
    """(elements, dtype) of each DDP gradient bucket, as DDP's own assignment makes them. The
    parameters are passed in reverse order, as DDP does (gradients become ready back to front)."""
    import torch
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return []
    metas = [torch.empty(p.shape, dtype=p.dtype, device="meta") for p in reversed(params)]
    limits = [dist._DEFAULT_FIRST_BUCKET_BYTES, int(bucket_cap_mb * 1024 * 1024)]
    buckets, _ = dist._compute_bucket_assignment_by_size(metas, limits, [False] * len(metas))
    return [(sum(metas[i].numel() for i in bucket), metas[bucket[0]].dtype) for bucket in buckets]


class DDPEngine:
    """Allocates DDP's buckets inside the simulation (category ``comm_buffers``) and counts the
    all-reduce volume: one all-reduce of every bucket per step."""

    name = "ddp"

    def __init__(self, world_size: int, rank: int = 0, checkpoint=None) -> None:
        self.world_size, self.rank, self.checkpoint = world_size, rank, checkpoint
        self._buckets: list = []

    def wrap(self, model) -> None:
        from .fsdp import apply_checkpointing

        self.params = [p for p in model.parameters() if p.requires_grad]
        apply_checkpointing(model, self.checkpoint)

    @contextlib.contextmanager
    def running(self, mode, phase) -> Iterator[None]:
        import torch

        phase.category = "comm_buffers"
        self._buckets = [torch.empty(n, dtype=dtype) for n, dtype in bucket_sizes(self.params)]
        phase.category = None
        yield

    def comm_bytes(self, model) -> dict[str, int]:
        """Per step: every bucket of the whole model (the simulation may have run fewer blocks)."""
        return {"all_reduce": sum(n * dtype.itemsize for n, dtype in bucket_sizes(list(model.parameters())))}
