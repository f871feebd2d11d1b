"""Failure museum: a 12-conv network without any normalization layer.

Shallow enough to have no depth problem, but with nothing between the 3x3 convs to keep the
activation scale in range it needs careful initialisation and a small learning rate to train.
Caught by FXA104 (missing normalization). Fix: nn.BatchNorm2d after every conv (bias=False).
"""

from torch import nn

INPUTS = [(8, 3, 64, 64)]


def build() -> nn.Module:
    layers, channels = [], 3
    for width in (32, 32, 32, 64, 64, 64, 128, 128, 128, 256, 256, 256):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))
