"""Failure museum: a 100-layer plain MLP (no residual connections, no normalization).

Gradients must cross 100 Linear layers to reach the first one, and nothing keeps the activation
scale in range: the network trains worse than a 10-layer one. Caught by FXA103 (deep plain stack)
and FXA104 (missing normalization). Fix: residual blocks with a LayerNorm each.
"""

from torch import nn

INPUTS = [(32, 256)]  # batch 32, 256 features


def build() -> nn.Module:
    layers = []
    for _ in range(100):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(256, 10))
