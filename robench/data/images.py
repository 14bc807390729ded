"""Datasets of PIL images, decoded per batch: ImageSource, and the dataset and collate its loader uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from robench.data.channels import to_channels
from robench.data.decode import (
    GRAYSCALE_MODES,
    UNREADABLE,
    WIDE_MODES,
    UnreadableImage,
    decoding,
    eval_transform,
    unit_gray,
)
from robench.data.digests import pixels_digest
from robench.data.inputs import Batch, InputConfig
from robench.errors import FieldError

if TYPE_CHECKING:
    from PIL import Image

PREFETCH = 4  # batches each loader worker decodes ahead (torch's default 2 leaves a fast GPU waiting on decoding)

# index -> (image, label, content hash or None: then the decoded pixels' hash). The image is a PIL image as a
# folder or timm dataset gives it (Any: a third-party dataset's items are not typed).
GetItem = Callable[[int], tuple[Any, int, str | None]]


class _Decoded(torch.utils.data.Dataset):
    """Items of a PIL-image dataset through a [0, 1] transform, as RGB or as luminance (mode "L").

    A grayscale image goes to a 3-channel model replicated, and an RGB image to a 1-channel
    model as its luminance (PIL's ITU-R 601-2 weights), exact for gray images either way.
    16-bit and float gray images are scaled to [0, 1] as floats (``unit_gray``), never clipped.

    An unreadable image becomes label -1 with the reason, reported by the caller with its
    file name: errors in loader workers would otherwise arrive as tracebacks, and
    timm's own ImageDataset silently substitutes the next image.
    """

    def __init__(self, get: GetItem, index: np.ndarray, cfg: InputConfig) -> None:
        self.get, self.index, self.channels = get, index, cfg.channels
        self.transform, self.gray = eval_transform(cfg), eval_transform(dataclasses.replace(cfg, channels=1))
        self.mode = "L" if cfg.channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row: int) -> tuple[Tensor, int, int, str, str]:
        """(image, label, row, content hash, "") or, for an unreadable image, (empty, -1, row, "", why)."""
        try:
            with decoding():
                image, label, digest = self.get(int(self.index[row]))
                return self._tensor(image), int(label), row, digest or pixels_digest(image), ""
        except UnreadableImage as e:
            return torch.zeros(0), -1, row, "", str(e)
        except (OSError, ValueError, SyntaxError):
            return torch.zeros(0), -1, row, "", UNREADABLE

    def _tensor(self, image: Image.Image) -> Tensor:
        if image.mode in WIDE_MODES:
            x = self.gray(unit_gray(image)).clamp(0.0, 1.0)  # bicubic overshoots; uint8 clips itself
            return to_channels(x[None], self.channels)[0]
        return self.transform(image.convert("RGB").convert(self.mode))


@dataclass
class ImageSource:
    """Datasets of PIL images (image folders, torchvision and HF datasets), decoded per batch."""

    name: str
    get: GetItem
    index: np.ndarray
    ids: list[str]
    num_classes: int
    classes: list[str]
    describe_row: Callable[[int], str]  # index -> human-readable name for error messages
    workers: int = 0
    skip_bad: bool = False  # skip unreadable images (recorded in ``skipped``) instead of failing
    skipped: dict[int, str] = field(default_factory=dict)  # row -> file name, of images skipped so far
    native: tuple[int, int, int] | None = None  # the first image's (channels, height, width)
    # index -> content hash without decoding (a file's bytes); None: decode and hash the pixels
    digest: Callable[[int], str] | None = None
    pin_memory: bool = False  # batches in page-locked memory, for copies to a GPU that overlap its work

    def batches(self, cfg: InputConfig, batch_size: int, order: Tensor | None = None) -> Iterator[Batch]:
        """Batches in id order (or ``order``); an unreadable image stops the run with its file name.

        With ``skip_bad`` it is left out of its batch and recorded in ``skipped`` instead, so
        callers can report it: never counted, never silently dropped.
        """
        order = torch.arange(len(self.ids)) if order is None else order
        loader = torch.utils.data.DataLoader(
            _Decoded(self.get, self.index[order.numpy()], cfg),
            batch_size=batch_size, num_workers=self.workers, collate_fn=_collate, pin_memory=self.pin_memory,
            prefetch_factor=PREFETCH if self.workers else None,
        )
        for images, labels, positions, digests, reasons in loader:
            rows, good = order[positions], labels >= 0
            why = [r for r, ok in zip(reasons, good.tolist(), strict=True) if not ok]
            for row, reason in zip(rows[~good].tolist(), why, strict=True):
                bad = self.describe_row(int(self.index[row]))
                if not self.skip_bad:
                    raise FieldError("skip_bad_images", f"cannot read image {bad}: {reason}; remove or replace it, "
                                                        f"or pass {{name}} to leave it out (it is recorded)")
                self.skipped[row] = bad
            if good.any():
                yield Batch(images, labels[good], rows[good], tuple(d for d, g in zip(digests, good.tolist(),
                                                                                     strict=True) if g))

    def content(self, rows: Sequence[int]) -> list[str]:
        """Each row's content hash (an unreadable image's is empty)."""
        return [self._digest(int(self.index[r])) for r in rows]

    def _digest(self, i: int) -> str:
        try:
            return self.digest(i) if self.digest is not None else pixels_digest(self.get(i)[0])
        except (OSError, ValueError, SyntaxError):
            return ""


def _collate(items: list[tuple[Tensor, int, int, str, str]]) -> tuple[Tensor, Tensor, Tensor, list[str], list[str]]:
    """Stack the readable images; labels, rows, content hashes and reasons of all items (-1 labels: unreadable)."""
    labels = torch.tensor([i[1] for i in items])
    rows = torch.tensor([i[2] for i in items])
    good = [i[0] for i in items if i[1] >= 0]
    images = torch.stack(good) if good else torch.zeros(0)
    return images, labels, rows, [i[3] for i in items], [i[4] for i in items]


def _native(get: GetItem, index: np.ndarray) -> tuple[int, int, int] | None:
    """(channels, height, width) of the first selected image, None if it cannot be read."""
    try:
        with decoding():
            image = get(int(index[0]))[0]
    except (OSError, ValueError, SyntaxError, IndexError):
        return None
    if not hasattr(image, "mode"):
        return None
    return (1 if image.mode in GRAYSCALE_MODES else 3, image.height, image.width)
