"""The batch-size solver: the largest batch whose simulated training-step peak fits a budget."""

from __future__ import annotations

from typing import Any, Callable

from ..units import parse_bytes

__all__ = ["batch_of", "max_batch_size"]


def max_batch_size(
    model,
    make_inputs: Callable[[int], Any],
    budget_bytes: int | str,
    *,
    optimizer: Any = "adam",
    amp: str | None = None,
    limit: int = 1 << 20,
    target: str | None = None,
    peak_of: Callable[[Any], int] | None = None,
    known: dict[int, int] | None = None,
) -> int:
    """The largest batch size whose simulated training-step peak fits in ``budget_bytes``
    (0 if not even batch 1 fits). ``make_inputs(batch_size)`` returns example inputs as accepted
    by ``simulate_training_step``. Peak memory grows about linearly with the batch size: secant
    steps from batches 1 and 2 find the crossing (a few fake runs), then a bracket and bisection
    settle it exactly. On the CUDA target the budget is compared with the predicted reserved
    bytes (``max_memory_reserved``: an OOM happens when a new segment does not fit).
    ``peak_of(inputs)`` replaces the single-process simulation (distributed plans pass their
    per-rank peak). ``known``: {batch: peak} already simulated (the caller's own run), not run again.

    With the peak affine in the batch (the usual case) the answer is predicted from two points
    and confirmed by simulating it and the next batch; otherwise the search above decides."""
    from .memory import simulate_training_step

    budget = parse_bytes(budget_bytes)
    if not callable(make_inputs):
        raise TypeError(
            f"make_inputs must be a callable batch_size -> example inputs, got {type(make_inputs).__name__}"
        )
    peaks: dict[int, int] = dict(known or {})

    def peak(batch: int) -> int:
        if batch not in peaks:
            if peak_of is not None:
                peaks[batch] = peak_of(make_inputs(batch))
            else:
                peaks[batch] = simulate_training_step(model, make_inputs(batch), optimizer=optimizer, amp=amp,
                                                      target=target).oom_bytes
        return peaks[batch]

    start = 1
    try:
        first = peak(1)
    except ValueError as exc:
        if "more than 1 value per channel" not in str(exc):
            raise
        start = 2  # training-mode BatchNorm on a 1x1 map needs two samples: batch 1 cannot train at all
        first = peak(2)
    if first > budget:
        return 0
    predicted = _affine_answer(peak, peaks, start, budget, limit)
    if predicted is not None:
        return predicted
    # secant steps on the (nearly linear) peak(batch) curve, starting from the two smallest batches
    low, high = start, start + 1
    guess = start
    for _ in range(6):
        slope = max((peak(high) - peak(low)) / (high - low), 1e-9)
        guess = int(min(limit, max(start, low + (budget - peak(low)) // slope)))
        if guess in (low, high):
            break
        low, high = (high, guess) if abs(guess - high) < abs(guess - low) else (low, guess)
        low, high = min(low, high), max(low, high)
    # bracket the answer around the guess with steps 1, 2, 4, ... (the fit is usually exact, so this
    # costs one or two runs), then bisect: batch `fits` fits, batch `too_big` does not
    if peak(guess) <= budget:
        fits, too_big, step = guess, None, 1
        while too_big is None:
            probe = min(limit, fits + step)
            if probe == fits:
                return limit
            if peak(probe) > budget:
                too_big = probe
            else:
                fits, step = probe, step * 2
    else:
        fits, too_big, step = start, guess, 1
        while too_big - step > start:
            probe = too_big - step
            if peak(probe) <= budget:
                fits = probe
                break
            too_big, step = probe, step * 2
    while too_big - fits > 1:
        middle = (fits + too_big) // 2
        if peak(middle) <= budget:
            fits = middle
        else:
            too_big = middle
    return fits


def _affine_answer(peak: Callable[[int], int], peaks: dict[int, int], start: int, budget: int,
                   limit: int) -> int | None:
    """The largest batch under ``budget`` on the line through batch ``start`` and the largest
    other known batch (else ``start + 1``), if simulation confirms it: it fits and the next batch
    does not. None when the line does not grow or the confirmation fails."""
    other = max((b for b in peaks if b > start), default=start + 1)
    rise = peak(other) - peak(start)
    if rise <= 0:
        return None
    guess = min(limit, start + (budget - peak(start)) * (other - start) // rise)
    if peak(guess) > budget:
        return None
    if guess == limit or peak(guess + 1) > budget:
        return guess
    return None


def batch_of(inputs: Any) -> int | None:
    """The leading dimension shared by every non-scalar tensor of ``inputs`` (a tuple), i.e. the
    batch at which ``inputs`` simulates like ``make_inputs(batch)`` (contiguous tensors of those
    shapes); None if they disagree or a tensor is not contiguous."""
    import torch

    tensors = [t for t in inputs if isinstance(t, torch.Tensor) and t.dim()]
    sizes = {t.shape[0] for t in tensors}
    return sizes.pop() if len(sizes) == 1 and all(t.is_contiguous() for t in tensors) else None
