"""Datasets held as tensors, resized per batch: TensorSource and scikit-learn's bundled digits."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robench.data.channels import to_channels
from robench.data.digests import content_digest
from robench.data.inputs import Batch, InputConfig, select

DIGITS_TEST_EVERY = 5  # digits test split: sklearn index % 5 == 0 (360 images); train: the rest
DIGITS_CLASSES = [str(d) for d in range(10)]


def _resize(images: Tensor, cfg: InputConfig) -> Tensor:
    """[0, 1] float NCHW -> the model's channels and size."""
    if tuple(images.shape[-2:]) != cfg.size:
        mode = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        images = F.interpolate(images, size=cfg.size, mode=mode, **kwargs).clamp(0.0, 1.0)
    return to_channels(images, cfg.channels).contiguous()


@dataclass
class TensorSource:
    """Small grayscale datasets held as uint8 (or float) tensors, resized per batch."""

    name: str
    images: Tensor  # [N, 1, h, w], uint8 0..255 or float in [0, 1]
    labels: Tensor  # [N] int64
    ids: list[str]
    num_classes: int
    scale: float = 255.0
    skipped: dict[int, str] = field(default_factory=dict)  # always empty: tensors are always readable
    classes: list[str] = field(default_factory=list)  # names in index order; none given: "0" .. str(num_classes - 1)

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = [str(i) for i in range(self.num_classes)]

    @property
    def native(self) -> tuple[int, int, int]:
        """(1, h, w): these datasets are grayscale."""
        return (1, *self.images.shape[-2:])

    def batches(self, cfg: InputConfig, batch_size: int, order: Tensor | None = None) -> Iterator[Batch]:
        """Consecutive batches in id order, or in ``order`` (rows) when given, e.g. shuffled for training."""
        order = torch.arange(len(self.ids)) if order is None else order
        for rows in order.split(batch_size):
            x = self.images[rows].float() / self.scale
            yield Batch(_resize(x, cfg), self.labels[rows], rows, tuple(self.content(rows.tolist())))

    def content(self, rows: Sequence[int]) -> list[str]:
        """Each row's hash over its stored array (uint8 or float, as the dataset holds it)."""
        return [content_digest(self.images[r].numpy()) for r in rows]


def load_digits_source(split: str = "test", limit: int | None = None, seed: int = 0) -> TensorSource:
    """scikit-learn's bundled digits (1797 8x8 images, 17 gray levels); test = index % 5 == 0."""
    from sklearn.datasets import load_digits

    d = load_digits()
    index = np.arange(len(d.target))
    in_test = index % DIGITS_TEST_EVERY == 0
    index = index[in_test] if split == "test" else index[~in_test]
    index = index[select(len(index), limit, seed, f"digits ({split} split)")]
    images = torch.from_numpy(d.images[index].astype(np.float32))[:, None]
    return TensorSource(
        name="digits", images=images, labels=torch.from_numpy(d.target[index].astype(np.int64)),
        ids=[f"digits:{i}" for i in index], num_classes=10, classes=list(DIGITS_CLASSES), scale=16.0,
    )
