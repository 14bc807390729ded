"""What every source gives: the model's input config, batches, the Source protocol, and seeded selection."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from robench.core.fields import Rule, check
from robench.errors import FieldError


def _size(size: tuple[int, ...]) -> str | None:
    ok = len(size) == 2 and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in size)
    return None if ok else "be (H, W), two whole numbers >= 1"


INPUT_FIELDS = {  # robench.core.fields: what robench's resizing and channel conversion can feed
    "channels": Rule(int, "a whole number", choices=(1, 3), must="be 1 (grayscale) or 3 (RGB)"),
    "size": Rule(tuple, "a tuple (H, W)", test=_size),
    "interpolation": Rule(str, "text such as bilinear"),
    "crop_pct": Rule(float, "a number", low=0, high=1, low_open=True, must="lie in (0, 1]"),
    "crop_mode": Rule(str, "text such as center"),
}


@dataclass(frozen=True)
class InputConfig:
    """How a model wants its pixels: from timm's data config, minus normalization."""

    channels: int = 3
    size: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        check(self, INPUT_FIELDS)

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> InputConfig:
        """From a timm data config (``resolve_model_data_config``)."""
        c, h, w = cfg["input_size"]
        return cls(
            channels=int(c),
            size=(int(h), int(w)),
            interpolation=str(cfg.get("interpolation", "bilinear")),
            crop_pct=float(cfg.get("crop_pct") or 1.0),
            crop_mode=str(cfg.get("crop_mode") or "center"),
        )


@dataclass(frozen=True)
class Batch:
    """Images in [0, 1] (float32, NCHW), labels, their rows in the source's id list, and each one's content hash.

    ``content`` (one ``content_digest`` per image, or empty where unknown) tells two images of
    one id apart: a re-encoded or altered file keeps its name but not its bytes.
    """

    images: Tensor
    labels: Tensor
    rows: Tensor
    content: tuple[str, ...] = ()


class Source(Protocol):
    """A selected, ordered set of labelled images with stable ids."""

    name: str
    ids: list[str]
    num_classes: int
    classes: list[str]  # class names in index order: label i means classes[i]
    skipped: dict[int, str]  # row -> name of each unreadable image left out so far

    @property
    def native(self) -> tuple[int, int, int] | None:
        """The images' own (channels, height, width): 1 channel for grayscale; None if unknown."""
        ...

    def batches(self, cfg: InputConfig, batch_size: int, order: Tensor | None = None) -> Iterator[Batch]: ...

    def content(self, rows: Sequence[int]) -> list[str]:
        """The content hashes of these rows, read without decoding where possible (checking a resumed state)."""
        ...


def select(total: int, limit: int | None, seed: int, name: str) -> np.ndarray:
    """Indices to use: all, or ``limit`` of them drawn by a seeded permutation, in order.

    Asking for more than exist is an error: a silent truncation would change n.
    """
    if limit is None:
        return np.arange(total)
    if limit <= 0:
        raise FieldError("limit", f"{{name}} must be a positive number, got {limit}")
    if limit > total:
        raise FieldError("limit", f"{{name}} {limit} is more than the {total} samples in {name}; "
                         f"use {{name}} {total} or less")
    perm = np.random.default_rng(seed).permutation(total)[:limit]
    return np.sort(perm)
