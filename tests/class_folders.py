"""Image folders whose class a model can tell by grey level, and such a model: class-order tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

GREYS = {"1": 40, "2": 120, "10": 200, "b": 40, "A": 120, "C": 200}  # class folder -> grey level of its images


def make_folder(root: Path, names: Sequence[str]) -> Path:
    """Class folders ``names`` under root, each holding two flat 8x8 images of its own grey level."""
    for name in names:
        (root / name).mkdir()
        for i in range(2):
            Image.new("L", (8, 8), GREYS[name]).save(root / name / f"{i}.png")
    return root


def torchvision_classes(root: Path) -> list[str]:
    """Class names in the index order of torchvision's ImageFolder (sorted as strings)."""
    try:
        from torchvision.datasets.folder import find_classes
    except ImportError:
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    return find_classes(str(root))[0]


class GreyLookup(nn.Module):
    """Names an image's class by its mean grey level; output i means ``names[i]``, as a model trained on them."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.register_buffer("greys", torch.tensor([GREYS[n] / 255 for n in names]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -1000.0 * (x.mean((1, 2, 3))[:, None] - self.greys[None]) ** 2
