"""Failure museum: a conv feature map flattened straight into a fully connected layer.

The 64x64x64 feature map becomes 262,144 features, so the Linear holds 268M parameters (99.99%
of the model): memory, optimizer state and overfitting capacity for almost no accuracy. Caught
by FXA101 (oversized Linear). Fix: nn.AdaptiveAvgPool2d(1) before the classifier.
"""

from torch import nn

INPUTS = [(8, 3, 128, 128)]


class ConvIntoHugeLinear(nn.Module):
    def __init__(self, num_classes: int = 1024):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.classifier = nn.Linear(64 * 64 * 64, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def build() -> nn.Module:
    return ConvIntoHugeLinear()
