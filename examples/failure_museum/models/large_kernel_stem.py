"""Failure museum: an AlexNet-style 11x11 stem convolution.

An 11x11 kernel costs 13x the MACs of a 3x3 per output, and two stacked 3x3 convs reach the same
receptive field with fewer params and an extra non-linearity. Caught by FXA102 (kernel larger
than 7x7). Fix: a stem of stacked 3x3 convs (or a 7x7 depthwise conv).
"""

from torch import nn

INPUTS = [(8, 3, 224, 224)]


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )
