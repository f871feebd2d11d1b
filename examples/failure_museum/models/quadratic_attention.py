"""Failure museum: hand-written attention at a long sequence.

softmax(q @ k^T) materialises a (batch, heads, seq, seq) score tensor, and autograd keeps it for
backward: at seq 4096 one score tensor is 4 heads x 4096^2 x 4 bytes = 256 MiB per layer, more
than every weight, gradient and optimizer state together. Caught by FXA106 (one tensor dominates
the training peak). Fix: F.scaled_dot_product_attention (flash / memory-efficient kernels never
materialise the scores) or activation checkpointing.
"""

import torch
from torch import nn

INPUTS = [(1, 4096, 256)]  # batch 1, seq 4096, width 256


class QuadraticAttention(nn.Module):
    def __init__(self, dim: int = 256, heads: int = 4):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t = x.size(0), x.size(1)
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        out = torch.softmax(scores, dim=-1) @ v
        return x + self.proj(out.transpose(1, 2).reshape(b, t, -1))


def build() -> nn.Module:
    return QuadraticAttention()
