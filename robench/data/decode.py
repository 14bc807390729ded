"""Image decoding: PIL images to [0, 1] tensors, and what robench refuses to decode."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

from robench.data.inputs import InputConfig

if TYPE_CHECKING:  # PIL, torch and timm are imported where images are decoded
    from PIL import Image
    from torch import Tensor

UNREADABLE = "corrupt or not an image"  # why an image that PIL cannot open is unreadable
WIDE_MODES = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "F": 1.0}
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")  # PIL modes of one-channel images


class UnreadableImage(ValueError):
    """An image robench will not decode; the message says why, for the one error line."""


@contextmanager
def decoding() -> Iterator[None]:
    """Decode images with PIL's decompression-bomb check as a refusal, and its other warnings off stderr.

    PIL warns (in several lines) from 89M pixels and raises from twice that; both become an
    UnreadableImage naming the size. Its other warnings (palette transparency, EXIF) are about
    files it reads correctly, and would break the one-line contract.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            size = str(e).split(", could be")[0].rstrip(".")
            raise UnreadableImage(f"PIL refuses it as a possible decompression bomb: {size}") from None


def unit_gray(image: Image.Image) -> Image.Image:
    """A 16-bit (I;16*, I) or float (F) gray image as mode F in [0, 1]: 16-bit over 65535, float as it is.

    PIL's convert("RGB") or ("L") would clip such values at 255, whitening the image.
    """
    scale = WIDE_MODES[image.mode]
    gray = image if image.mode == "F" else image.convert("I").convert("F")
    low, high = cast(tuple[float, float], gray.getextrema())  # mode F has one band: one (min, max)
    if low < 0 or high > scale:
        raise UnreadableImage(f"its mode {image.mode} holds values from {low:g} to {high:g}, outside 0..{scale:g} "
                              f"(robench reads 16-bit images as 0..65535 and float ones as 0..1)")
    return gray if scale == 1.0 else gray.point(lambda v: v * (1.0 / scale))


def eval_transform(cfg: InputConfig) -> Callable[[Image.Image], Tensor]:
    """timm's eval transform (resize, crop, interpolation) giving [0, 1] float tensors.

    Normalization with mean 0 and std 1 keeps timm's float conversion while the
    model's own mean/std stay inside the model wrapper; ``normalize=False`` would
    give uint8 0..255 instead.
    """
    from timm.data import create_transform

    return create_transform(
        (cfg.channels, *cfg.size), interpolation=cfg.interpolation, crop_pct=cfg.crop_pct,
        crop_mode=cfg.crop_mode, mean=(0.0,) * cfg.channels, std=(1.0,) * cfg.channels,
    )

