"""IDX files, the format of MNIST and Fashion-MNIST, read as tensor sources."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from robench.data.builtin import TensorSource
from robench.data.inputs import select
from robench.errors import RobenchError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
MAX_IDX_BYTES = 2**31  # 2 GiB of pixels: EMNIST's largest file holds 0.55 GiB


def _read_idx(path: Path, name: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST.

    Only the bytes its header promises are read (and one more, to tell trailing data): a small
    gzip that inflates to GiB is refused after what the header said, never read whole.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, dtype, ndim = struct.unpack(">HBB", _exactly(f, 4, "header"))
            if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
                raise ValueError("bad magic number")
            shape = struct.unpack(f">{ndim}I", _exactly(f, 4 * ndim, "header"))
            count = int(np.prod(shape, dtype=np.int64))
            if count > MAX_IDX_BYTES:
                raise ValueError(f"its header claims {'x'.join(map(str, shape))} = {count} bytes, over robench's "
                                 f"limit of {MAX_IDX_BYTES}")
            data = _exactly(f, count, f"{'x'.join(map(str, shape))} bytes of data")
            if f.read(1):
                raise ValueError(f"it holds more than the {'x'.join(map(str, shape))} bytes its header claims")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError, zlib.error) as e:
        raise RobenchError(f"cannot read IDX file {path}: {e}; is it an uncorrupted {name} file?") from None


def _exactly(f: io.BufferedIOBase, count: int, what: str) -> bytes:
    """``count`` bytes from ``f``, or ValueError saying the file ends before ``what``."""
    data = f.read(count)
    if len(data) != count:
        raise ValueError(f"it ends before its {what} ({len(data)} of {count} bytes)")
    return data


def _find_idx(root: Path, stem: str, name: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    split, other, prefix = ("training", "test", "t10k") if stem.startswith("train") else ("test", "training", "train")
    if not root.is_dir():
        problem = f"{root} is not a folder" if root.exists() else f"folder {root} not found"
        raise RobenchError(f"{name}: {problem}; {_idx_hint(root, name)}")
    if any(root.glob(f"{prefix}-*-idx*-ubyte*")):
        raise RobenchError(f"{name} file {stem}[.gz] not found in {root}: the folder holds the {other} split "
                           f"({prefix}-*) but not the {split} split; add the {split} split's IDX files to it")
    raise RobenchError(f"{name} file {stem}[.gz] not found in {root}; {_idx_hint(root, name)}")


def _idx_hint(root: Path, name: str) -> str:
    """Where the IDX files come from: the Debian package for Fashion-MNIST's own folder, else a folder to give."""
    if name != "Fashion-MNIST":
        return "give the folder holding the IDX files (MNIST-format train-* and t10k-* images and labels) as mnist:DIR"
    if root == FASHION_MNIST_DIR:
        return ("install the Debian package dataset-fashion-mnist, or give the folder of its IDX files as "
                "fashion-mnist:DIR")
    return (f"give the folder of its IDX files as fashion-mnist:DIR (the Debian package dataset-fashion-mnist "
            f"installs them in {FASHION_MNIST_DIR})")


def load_idx_source(root: Path, name: str, classes: Sequence[str], split: str = "test", limit: int | None = None,
                    seed: int = 0) -> TensorSource:
    """MNIST-format IDX files (t10k-* for test, train-* for train), as the source ``name`` (ids ``name:split:i``)."""
    title = "Fashion-MNIST" if name == "fashion-mnist" else "MNIST"
    prefix = "t10k" if split == "test" else "train"
    images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte", title), title)
    labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte", title), title)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise RobenchError(f"{title} files in {root} do not match: {images.shape} images, {labels.shape} labels")
    index = select(len(labels), limit, seed, f"{name} ({split} split)")
    return TensorSource(
        name=name, images=torch.from_numpy(images[index].copy())[:, None],
        labels=torch.from_numpy(labels[index].astype(np.int64)),
        ids=[f"{name}:{split}:{i}" for i in index], num_classes=len(classes), classes=list(classes),
    )


def load_fashion_mnist_source(
    root: Path = FASHION_MNIST_DIR, split: str = "test", limit: int | None = None, seed: int = 0
) -> TensorSource:
    """Fashion-MNIST from IDX files (t10k-* for test, train-* for train)."""
    return load_idx_source(root, "fashion-mnist", FASHION_MNIST_CLASSES, split, limit, seed)
