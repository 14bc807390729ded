"""LeNet-5 (LeCun et al., 1998) for 1-channel 32x32 digits: any PyTorch classifier works as a factory.

    robench train --arch examples/lenet.py:LeNet --out lenet.safetensors   # 32 px: train's default
    robench eval -m examples/lenet.py:LeNet@lenet.safetensors
"""

from torch import nn


class LeNet(nn.Sequential):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),  # 32 -> 28 -> 14
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # 14 -> 10 -> 5
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )
