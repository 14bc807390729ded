"""Models that mask their gradients, for the tests that show which attacks see through them.

Wrappers around a trained model taking [0, 1] pixels; the wrapped model's weights are shared.
"""

from __future__ import annotations

import torch
from torch import nn


class Scaled(nn.Module):
    """Logits times 1000: in float32 the cross-entropy gradient of a confident sample underflows to exactly zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1000


class Rounded(Scaled):
    """Rounds its input to 8 bits inside forward: every input gradient is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)
