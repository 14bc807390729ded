"""The built-in default model: timm's ``test_resnet`` trained on digits at 32 px.

It is trained on first use (about 10 s on 2 CPU cores) and cached, so
``robench eval`` works offline on a fresh machine. The built-in zoo replaces it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from robench import __version__
from robench.cache import cache_dir
from robench.checkpoint import save_checkpoint
from robench.data import InputConfig, load_digits_source

ARCH = "test_resnet"
SIZE = 32
EPOCHS = 6
SEED = 0
MEAN = STD = (0.5, 0.5, 0.5)


def default_checkpoint() -> Path:
    """Path of the default model, training it first if it is not cached yet."""
    path = cache_dir() / f"default-{ARCH}-digits{SIZE}-v1.safetensors"
    if not path.is_file():
        train_default(path)
    return path


def train_default(path: Path) -> float:
    """Plain (non-adversarial) training on the digits train split; returns test accuracy."""
    import timm

    torch.manual_seed(SEED)
    model = timm.create_model(ARCH, num_classes=10)
    cfg = InputConfig(size=(SIZE, SIZE))
    train = next(load_digits_source("train").batches(cfg, 10_000))
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    x, y = (train.images - mean) / std, train.labels
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    acc = _test_accuracy(model, cfg, mean, std)
    meta = {
        "arch": ARCH, "num_classes": 10, "input_size": [3, SIZE, SIZE], "mean": list(MEAN), "std": list(STD),
        "interpolation": "bilinear", "crop_pct": 1.0, "dataset": "digits:train",
        "recipe": {"optimizer": "AdamW", "lr": 3e-3, "epochs": EPOCHS, "batch_size": 64, "adversarial": None},
        "seed": SEED, "test_accuracy": acc, "robench_version": __version__,
    }
    save_checkpoint(path, model, meta)
    return acc


def _test_accuracy(model: torch.nn.Module, cfg: InputConfig, mean: torch.Tensor, std: torch.Tensor) -> float:
    model.eval()
    test = next(load_digits_source("test").batches(cfg, 10_000))
    with torch.inference_mode():
        return float((model((test.images - mean) / std).argmax(1) == test.labels).float().mean())
