"""Failure museum: a GradScaler loop with backward inside autocast, clipping of scaled gradients
and a direct optimizer step.

backward() inside the autocast block runs the backward ops under autocast too (the docs advise
against it).
clip_grad_norm_ before scaler.unscale_ clips gradients that are still multiplied by the loss
scale (65536 at the start), so the clip threshold is meaningless; optimizer.step() instead of
scaler.step() applies those 65536x gradients and never skips a step with inf/NaN gradients.
"""

import torch
import torch.nn.functional as F


def train(model, loader, optimizer, epochs: int = 10):
    scaler = torch.amp.GradScaler("cuda")
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
                scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            scaler.update()
