"""Shared fixtures: an isolated cache, a trained zoo model, tiny hand-checkable models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session", autouse=True)
def robench_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session trains into its own cache: tests never touch ~/.cache."""
    path = tmp_path_factory.mktemp("robench-cache")
    old = os.environ.get("ROBENCH_CACHE_DIR")
    os.environ["ROBENCH_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ROBENCH_CACHE_DIR", None)
    else:
        os.environ["ROBENCH_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a loaded 2-core machine two threads waiting on each other run ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    """The zoo's plainly trained test_resnet (digits, 32 px), shipped in the package."""
    from robench.models.zoo import get

    return get("resnet-base").path


@pytest.fixture(scope="session")
def trained(default_checkpoint: Path):
    """The zoo's resnet-base loaded as a LoadedModel ([0, 1] in, logits out)."""
    from robench.models import load_model, parse_spec

    return load_model(parse_spec(str(default_checkpoint)), num_classes=10)


@pytest.fixture(scope="session")
def digits_batch(trained):
    """64 digits test images at the trained model's input size."""
    from robench.data import load_digits_source

    return next(load_digits_source("test", limit=64, seed=0).batches(trained.input, 64))


class Linear(nn.Module):
    """logits = W x.flatten() + b: its input gradient is known by hand."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture
def linear_model() -> Linear:
    """Two classes over 4 pixels (1x2x2 images) with distinct, hand-checkable weights."""
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, -0.5, 3.0]])
    return Linear(w, torch.tensor([0.1, -0.1]))


@pytest.fixture
def small_cnn() -> nn.Module:
    """A seeded conv net with BatchNorm (buffers) and Dropout (mode matters), for property tests."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    )


@pytest.fixture(scope="session")
def class_folder(tmp_path_factory: pytest.TempPathFactory):
    """Make an image folder of these class folders (tests/class_folders.py: flat images of each class's grey)."""
    from class_folders import make_folder

    return lambda *names: make_folder(tmp_path_factory.mktemp("classes"), names)


@pytest.fixture(scope="session")
def twin_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two image folders of the same file names: 20 digits test images as PNG (A), and the same inverted (B)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits, root = load_digits(), tmp_path_factory.mktemp("twins")
    for name, invert in (("A", False), ("B", True)):
        for k, i in enumerate(range(0, 100, 5)):
            image = (digits.images[i] * 255 / 16).astype("uint8")
            path = root / name / str(digits.target[i]) / f"{k:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(255 - image if invert else image).save(path)
    return root / "A", root / "B"
