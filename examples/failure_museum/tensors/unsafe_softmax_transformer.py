"""Failure museum: a hand-written softmax without max-subtraction inside a small transformer.

Block 1's attention computes `exp(scores)` and normalises afterwards, and its scores are large (no
1/sqrt(d) scaling). In float16 `exp` overflows for scores above 11.09 (inf / inf = NaN); in
bfloat16 it does not overflow, but a score of 40 carries a rounding error of about 0.1 and exp turns
that into a 10% error. `compare_precision(model, tokens)` names `blocks.1.attn.exp` as the first
layer over tolerance. The safe variant (`make_model(unsafe=False)`) uses softmax with scaling.
"""

import math

import torch
from torch import nn


class Exp(nn.Module):
    """exp of raw attention scores: the fp16-unsafe op (no max-subtraction before it)."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.exp(scores)


class Attention(nn.Module):
    def __init__(self, width: int, unsafe: bool) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.unsafe = unsafe
        self.exp = Exp() if unsafe else None
        self.softmax = None if unsafe else nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.unsafe:  # unscaled scores, exponentiated directly
            weights = self.exp(q @ k.transpose(-1, -2))
            weights = weights / weights.sum(-1, keepdim=True)
        else:
            weights = self.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]))
        return self.out(weights @ v)


class Block(nn.Module):
    def __init__(self, width: int, unsafe: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, unsafe)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 100, width: int = 32, depth: int = 2, unsafe_block: int | None = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width, unsafe=i == unsafe_block) for i in range(depth))
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def make_model(unsafe: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """(model, example tokens), with seeded weights; the factory the CLI and the tests use."""
    torch.manual_seed(0)
    model = TinyTransformer(unsafe_block=1 if unsafe else None)
    with torch.no_grad():  # sharp attention, as in a trained model: raw scores reach about +-60
        for block in model.blocks:
            block.attn.q.weight.mul_(3.0)
            block.attn.k.weight.mul_(3.0)
    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    return model, tokens


if __name__ == "__main__":
    from training_profiler import compare_precision

    print(compare_precision(*make_model(), dtype=torch.bfloat16))
