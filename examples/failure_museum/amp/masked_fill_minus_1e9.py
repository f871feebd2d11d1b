"""Failure museum: an attention mask filled with -1e9 under fp16 autocast.

-1e9 is far outside float16's range (largest finite value 65504). Under CUDA autocast the scores
are float16, and masked_fill raises "value cannot be converted to type c10::Half without
overflow"; written with torch.where instead it silently becomes -inf and a fully masked row turns
into NaN after the softmax. torch.finfo(scores.dtype).min is right for every dtype.
"""

import torch


def attention(q, k, v, mask):
    with torch.autocast("cuda", dtype=torch.float16):
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask, -1e9)
        return scores.softmax(-1) @ v
