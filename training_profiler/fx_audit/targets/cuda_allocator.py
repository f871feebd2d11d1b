"""A model of PyTorch's CUDA caching allocator: what ``max_memory_allocated`` and
``max_memory_reserved`` count.

Constants and rules from ``c10/cuda/CUDACachingAllocator.cpp`` (and ``c10/core/AllocatorConfig.h``,
which holds the same constants in recent torch), default ``PYTORCH_CUDA_ALLOC_CONF``:

- every request is rounded up to a multiple of ``kMinBlockSize`` = 512 bytes (``round_size``); the
  rounded size is what ``memory_allocated`` / ``max_memory_allocated`` count;
- requests up to ``kSmallSize`` = 1 MiB come from the small pool, whose segments are
  ``kSmallBuffer`` = 2 MiB (``get_allocation_size``);
- larger requests below ``kMinLargeAlloc`` = 10 MiB get a ``kLargeBuffer`` = 20 MiB segment;
- requests of 10 MiB and more get a segment rounded up to ``kRoundLarge`` = 2 MiB;
- a cached free block is reused best-fit (smallest block that fits, in the request's pool) and
  split when the rest is at least 512 bytes (small pool) or more than 1 MiB (large pool)
  (``should_split``); freed neighbours merge; segments are never returned to the driver without
  ``empty_cache()`` (or an OOM retry), so ``memory_reserved`` only grows.

``replay`` runs a sequence of allocations and frees through that model on one stream and returns
the peak reserved bytes: the figure users run out of memory on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "K_LARGE_BUFFER",
    "K_MIN_BLOCK_SIZE",
    "K_MIN_LARGE_ALLOC",
    "K_ROUND_LARGE",
    "K_SMALL_BUFFER",
    "K_SMALL_SIZE",
    "AllocatorReplay",
    "replay",
    "round_size",
    "segment_size",
]

K_MIN_BLOCK_SIZE = 512
K_SMALL_SIZE = 1 << 20
K_SMALL_BUFFER = 2 << 20
K_LARGE_BUFFER = 20 << 20
K_MIN_LARGE_ALLOC = 10 << 20
K_ROUND_LARGE = 2 << 20


def round_size(nbytes: int) -> int:
    """Bytes the allocator hands out (and ``memory_allocated`` counts) for a request; 0 stays 0
    (the allocator returns no block for an empty tensor)."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // K_MIN_BLOCK_SIZE) * K_MIN_BLOCK_SIZE


def segment_size(rounded: int) -> int:
    """Size of the segment (one ``cudaMalloc``) that a request of ``rounded`` bytes opens when no
    cached block fits."""
    if rounded <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if rounded < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return -(-rounded // K_ROUND_LARGE) * K_ROUND_LARGE


@dataclass
class _Block:
    segment: int
    offset: int
    size: int
    free: bool = True


@dataclass
class AllocatorReplay:
    """Peak allocated and reserved bytes of a replayed sequence, and the reserved bytes at the end."""

    peak_allocated: int = 0
    peak_reserved: int = 0
    reserved: int = 0
    segments: list[int] = field(default_factory=list)  # sizes of the segments opened, in order


def replay(events: list[tuple[int, int]], reset_at: int = 0) -> AllocatorReplay:
    """Replay ``[(key, nbytes)]``: a positive ``nbytes`` allocates a block for ``key``, a
    negative one (or 0 with a known key) frees the block of ``key``. Sizes are rounded here.

    Allocated bytes count whole blocks, as ``memory_allocated`` does: a large-pool block whose
    rest is 1 MiB or less is not split, so the request is charged the whole block. Before event
    ``reset_at`` the peaks are reset to the current values (``torch.cuda.reset_peak_memory_stats``
    before the measured step)."""
    blocks: dict[int, list[_Block]] = {}  # segment -> blocks by offset
    pools: dict[int, bool] = {}  # segment -> is small pool
    held: dict[int, _Block] = {}
    result = AllocatorReplay()
    allocated = 0
    for i, (key, nbytes) in enumerate(events):
        if i == reset_at:
            result.peak_allocated, result.peak_reserved = allocated, result.reserved
        if nbytes > 0:
            size = round_size(nbytes)
            small = size <= K_SMALL_SIZE
            fits = [b for seg, bs in blocks.items() if pools[seg] == small for b in bs if b.free and b.size >= size]
            if fits:
                block = min(fits, key=lambda b: (b.size, b.segment, b.offset))
            else:
                seg_bytes = segment_size(size)
                seg = len(result.segments)
                result.segments.append(seg_bytes)
                result.reserved += seg_bytes
                block = _Block(seg, 0, seg_bytes)
                blocks[seg], pools[seg] = [block], small
            rest = block.size - size
            if (small and rest >= K_MIN_BLOCK_SIZE) or (not small and rest > K_SMALL_SIZE):
                tail = _Block(block.segment, block.offset + size, rest)
                segment = blocks[block.segment]
                segment.insert(segment.index(block) + 1, tail)
                block.size = size
            block.free = False
            held[key] = block
            allocated += block.size
        elif key in held:
            block = held.pop(key)
            allocated -= block.size
            block.free = True
            segment = blocks[block.segment]
            i = segment.index(block)
            if i + 1 < len(segment) and segment[i + 1].free:  # merge with the free neighbours
                block.size += segment.pop(i + 1).size
            if i > 0 and segment[i - 1].free:
                segment[i - 1].size += segment.pop(i).size
        result.peak_allocated = max(result.peak_allocated, allocated)
        result.peak_reserved = max(result.peak_reserved, result.reserved)
    return result
