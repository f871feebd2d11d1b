"""Failure museum: convolutions with a bias directly followed by BatchNorm.

BatchNorm subtracts the per-channel mean, so the conv's bias cancels out exactly: wasted params,
wasted optimizer state, a gradient that is always zero. Caught by FXA107. Fix: bias=False.
"""

from torch import nn

INPUTS = [(8, 3, 32, 32)]


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
