"""Failure museum: binary cross-entropy on sigmoid outputs under fp16 autocast.

In fp16 a sigmoid output rounds to exactly 0.0 or 1.0 for |logit| > ~11, log(0) is -inf and
the loss becomes inf/NaN. CUDA autocast refuses F.binary_cross_entropy outright.
"""

import torch
import torch.nn.functional as F


def train_step(model, batch, target, optimizer, scaler):
    with torch.autocast("cuda", dtype=torch.float16):
        logits = model(batch)
        loss = F.binary_cross_entropy(torch.sigmoid(logits), target)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss
