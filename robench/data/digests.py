"""Content hashes: of one sample (file bytes or array), of a dataset's samples in order, and of its id list."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


def content_digest(data: bytes | np.ndarray) -> str:
    """SHA-256 of one sample's content: an image file's bytes, or a built-in sample's array (with dtype, shape)."""
    if isinstance(data, np.ndarray):
        head = f"{data.dtype}|{data.shape}|".encode()
        return hashlib.sha256(head + np.ascontiguousarray(data).tobytes()).hexdigest()
    return hashlib.sha256(data).hexdigest()


def pixels_digest(image: Image.Image) -> str:
    """The content hash of a decoded PIL image (its mode, size and pixel bytes): for datasets without files."""
    return content_digest(np.asarray(image.convert("RGB")))


def content_sha256(digests: Sequence[str]) -> str | None:
    """The dataset's content fingerprint: SHA-256 over its samples' content hashes in order; None if any is unknown."""
    if not digests or not all(digests):
        return None
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def ids_sha256(ids: Sequence[str]) -> str:
    """Hash of the ordered id list: two results with equal hashes saw the same samples."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()
