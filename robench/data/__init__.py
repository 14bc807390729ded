"""Datasets -> batches of ([0, 1] float images, labels, row positions), with stable sample ids.

Built-in: ``digits`` (scikit-learn's bundled 8x8 digits, the default) and
``fashion-mnist[:DIR]`` and ``mnist:DIR`` (IDX files); anything else is an ImageFolder directory
or a timm dataset string (``torch/...``, ``hfds/...``).

Every source names its classes in index order (``classes``). Image folders number their
class folders in natural order (1, 2, 10: timm's) or as strings (1, 10, 2: torchvision's
ImageFolder), or by a class list (a ``--classes`` file, a checkpoint's), because a model is
only right when its output index means the class the data labels with that index.

Each source keeps only what it must in memory (digits and Fashion-MNIST are a few MB
of uint8); images are resized per batch to the model's input size, so memory stays
O(batch) whatever the model's resolution.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robench.core.files import read_text
from robench.errors import FieldError, RobenchError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TEST_EVERY = 5  # digits test split: sklearn index % 5 == 0 (360 images); train: the rest
DIGITS_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
CLASS_ORDERS = ("natural", "lexical")  # natural: timm's (1, 2, 10); lexical: torchvision's ImageFolder (1, 10, 2)
SHOWN_NAMES = 5  # class names a message shows of a list
TIMM_PREFIXES = ("torch", "hfds", "hfids", "tfds", "wds")  # data specs passed to timm's create_dataset


@dataclass(frozen=True)
class InputConfig:
    """How a model wants its pixels: from timm's data config, minus normalization."""

    channels: int = 3
    size: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"

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


def content_digest(data: bytes | np.ndarray) -> str:
    """SHA-256 of one sample's content: an image file's bytes, or a built-in sample's array (with dtype, shape)."""
    if isinstance(data, np.ndarray):
        head = f"{data.dtype}|{data.shape}|".encode()
        return hashlib.sha256(head + np.ascontiguousarray(data).tobytes()).hexdigest()
    return hashlib.sha256(data).hexdigest()


def pixels_digest(image: Any) -> str:
    """The content hash of a decoded PIL image (its mode, size and pixel bytes): for datasets without files."""
    return content_digest(np.asarray(image.convert("RGB")))


def content_sha256(digests: Sequence[str]) -> str | None:
    """The dataset's content fingerprint: SHA-256 over its samples' content hashes in order; None if any is unknown."""
    if not digests or not all(digests):
        return None
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


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


def ids_sha256(ids: Sequence[str]) -> str:
    """Hash of the ordered id list: two results with equal hashes saw the same samples."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's "L": RGB -> one channel


def channel_note(label: str, channels: int, source: Source) -> str | None:
    """What feeding ``source`` to a model of ``channels`` changes about its colours: only RGB to 1 channel is said.

    Gray images go to a 3-channel model replicated, which changes nothing a model could see.
    """
    native = source.native
    if channels == 1 and native is not None and native[0] == 3:
        r, g, b = LUMINANCE
        return (f"model '{label}' takes 1 channel: the RGB images of {source.name} are converted to luminance "
                f"(L = {r:g} R + {g:g} G + {b:g} B)")
    return None


def to_channels(images: Tensor, channels: int) -> Tensor:
    """[N, C, H, W] with 1 or 3 channels -> ``channels``: gray replicated, or RGB as its luminance.

    Linear, with weights summing to 1: a perturbation converted stays within its L-inf bound.
    """
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    weights = images.new_tensor(LUMINANCE).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


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
    classes: list[str] | None = None  # names in index order; None: "0" .. str(num_classes - 1)

    def __post_init__(self) -> None:
        if self.classes is None:
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


def _exactly(f: Any, count: int, what: str) -> bytes:
    """``count`` bytes from ``f``, or ValueError saying the file ends before ``what``."""
    data = f.read(count)
    if len(data) != count:
        raise ValueError(f"it ends before its {what} ({len(data)} of {count} bytes)")
    return data


def _find_idx(root: Path, stem: str, name: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    hint = "install the Debian package dataset-fashion-mnist or give the folder as fashion-mnist:DIR" \
        if name == "Fashion-MNIST" else "give the folder holding the IDX files as mnist:DIR"
    raise RobenchError(f"{name} file {stem}[.gz] not found in {root}; {hint}")


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


UNREADABLE = "corrupt or not an image"  # why an image that PIL cannot open is unreadable
WIDE_MODES = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "F": 1.0}


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


def unit_gray(image: Any) -> Any:
    """A 16-bit (I;16*, I) or float (F) gray image as mode F in [0, 1]: 16-bit over 65535, float as it is.

    PIL's convert("RGB") or ("L") would clip such values at 255, whitening the image.
    """
    scale = WIDE_MODES[image.mode]
    gray = image if image.mode == "F" else image.convert("I").convert("F")
    low, high = gray.getextrema()
    if low < 0 or high > scale:
        raise UnreadableImage(f"its mode {image.mode} holds values from {low:g} to {high:g}, outside 0..{scale:g} "
                              f"(robench reads 16-bit images as 0..65535 and float ones as 0..1)")
    return gray if scale == 1.0 else gray.point(lambda v: v * (1.0 / scale))


class _Decoded(torch.utils.data.Dataset):
    """Items of a PIL-image dataset through a [0, 1] transform, as RGB or as luminance (mode "L").

    A grayscale image goes to a 3-channel model replicated, and an RGB image to a 1-channel
    model as its luminance (PIL's ITU-R 601-2 weights), exact for gray images either way.
    16-bit and float gray images are scaled to [0, 1] as floats (``unit_gray``), never clipped.

    An unreadable image becomes label -1 with the reason, reported by the caller with its
    file name: errors in loader workers would otherwise arrive as tracebacks, and
    timm's own ImageDataset silently substitutes the next image.
    """

    def __init__(self, get: Any, index: np.ndarray, cfg: InputConfig) -> None:
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

    def _tensor(self, image: Any) -> Tensor:
        if image.mode in WIDE_MODES:
            x = self.gray(unit_gray(image)).clamp(0.0, 1.0)  # bicubic overshoots; uint8 clips itself
            return to_channels(x[None], self.channels)[0]
        return self.transform(image.convert("RGB").convert(self.mode))


def eval_transform(cfg: InputConfig) -> Any:
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


@dataclass
class ImageSource:
    """Datasets of PIL images (image folders, torchvision and HF datasets), decoded per batch."""

    name: str
    get: Any  # index -> (PIL image, label, content hash or None: then the decoded pixels' hash)
    index: np.ndarray
    ids: list[str]
    num_classes: int
    classes: list[str]
    describe_row: Any  # index -> human-readable name for error messages
    workers: int = 0
    skip_bad: bool = False  # skip unreadable images (recorded in ``skipped``) instead of failing
    skipped: dict[int, str] = field(default_factory=dict)  # row -> file name, of images skipped so far
    native: tuple[int, int, int] | None = None  # the first image's (channels, height, width)
    digest: Any = None  # index -> content hash without decoding (a file's bytes); None: decode and hash the pixels

    def batches(self, cfg: InputConfig, batch_size: int, order: Tensor | None = None) -> Iterator[Batch]:
        """Batches in id order (or ``order``); an unreadable image stops the run with its file name.

        With ``skip_bad`` it is left out of its batch and recorded in ``skipped`` instead, so
        callers can report it: never counted, never silently dropped.
        """
        order = torch.arange(len(self.ids)) if order is None else order
        loader = torch.utils.data.DataLoader(
            _Decoded(self.get, self.index[order.numpy()], cfg),
            batch_size=batch_size, num_workers=self.workers, collate_fn=_collate,
        )
        for images, labels, positions, digests, reasons in loader:
            rows, good = order[positions], labels >= 0
            why = [r for r, ok in zip(reasons, good.tolist(), strict=True) if not ok]
            for row, reason in zip(rows[~good].tolist(), why, strict=True):
                bad = self.describe_row(int(self.index[row]))
                if not self.skip_bad:
                    raise RobenchError(f"cannot read image {bad}: {reason}; remove or replace it, "
                                       f"or pass --skip-bad-images to leave it out (it is recorded)")
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


GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")  # PIL modes of one-channel images


def _native(get: Any, index: np.ndarray) -> tuple[int, int, int] | None:
    """(channels, height, width) of the first selected image, None if it cannot be read."""
    try:
        with decoding():
            image = get(int(index[0]))[0]
    except (OSError, ValueError, SyntaxError, IndexError):
        return None
    if not hasattr(image, "mode"):
        return None
    return (1 if image.mode in GRAYSCALE_MODES else 3, image.height, image.width)


def few(names: Sequence[str], start: int = 0) -> str:
    """At most SHOWN_NAMES names from ``start``, with "..." where some are left out: lists in one-line messages."""
    shown = ", ".join(names[start:start + SHOWN_NAMES])
    return ("..., " if start > 0 else "") + shown + (", ..." if len(names) > start + SHOWN_NAMES else "")


def few_pair(a: Sequence[str], b: Sequence[str]) -> tuple[str, str]:
    """Two class lists for a one-line message, each shown from just before where they first differ."""
    diff = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, min(diff - 2, len(a) - SHOWN_NAMES, len(b) - SHOWN_NAMES))
    return few(a, start), few(b, start)


def sort_classes(names: Sequence[str], order: str) -> list[str]:
    """Class names in ``order``: natural (timm's: 1, 2, 10, case-insensitive) or lexical (torchvision's: 1, 10, 2)."""
    from timm.utils.misc import natural_key

    return sorted(names, key=natural_key) if order == "natural" else sorted(names)


def class_list_problem(names: Sequence[str]) -> str | None:
    """What is wrong with a class list (no names, an empty name, a name twice), or None."""
    if not names:
        return "it names no class"
    empty = next((i for i, n in enumerate(names) if not n), None)
    if empty is not None:
        return f"entry {empty + 1} is empty"
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            return f"'{name}' is named twice (entries {seen[name] + 1} and {i + 1})"
        seen[name] = i
    return None


def read_class_list(path: Path) -> list[str]:
    """Class names in index order from a text file, one a line (trailing blank lines ignored)."""
    try:  # at most TEXT_LIMIT bytes, and only a regular file: a FIFO or /dev/zero would never end
        text = read_text(path, "classes").removeprefix("\ufeff")  # a BOM (Windows editors) is not part of a name
    except RobenchError as e:
        raise FieldError("classes", f"{{name}}: {e}") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    problem = class_list_problem(names)
    if problem:
        raise FieldError("classes", f"{{name}} file {path}: {problem}; write one class name a line, in index order")
    return names


def order_warning(root: Path, names: Sequence[str]) -> str | None:
    """One line saying that the two usual folder orders disagree here, or None when they agree."""
    natural, lexical = sort_classes(names, "natural"), sort_classes(names, "lexical")
    if natural == lexical:
        return None
    shown = few_pair(natural, lexical)
    return (f"data {root}: class folders sort differently naturally ({shown[0]}) and as strings "
            f"({shown[1]}, as torchvision's ImageFolder does); robench uses natural order: pass "
            f"--class-order lexical if the model was trained with torchvision, or --classes FILE")


def folder_class_map(root: Path, found: Sequence[str], class_order: str, classes: Sequence[str] | None,
                     classes_from: str) -> dict[str, int]:
    """Class folder name -> index: by the class list when given, else by sorting the folders in ``class_order``.

    Every folder must be in the list: timm's reader would silently drop the images of the others.
    """
    if classes is None:
        return {name: i for i, name in enumerate(sort_classes(found, class_order))}
    known = set(classes)
    unnamed = [name for name in sort_classes(found, "natural") if name not in known]
    if unnamed:
        raise RobenchError(f"data {root}: class folder {', '.join(repr(n) for n in unnamed[:SHOWN_NAMES])}"
                           f"{', ...' if len(unnamed) > SHOWN_NAMES else ''} not named in {classes_from}; "
                           f"its images cannot be scored: remove the folder or give a class list naming it")
    return {name: i for i, name in enumerate(classes)}


def _folder_reader(root: Path, class_map: dict[str, int] | None = None) -> Any:
    from timm.data.readers import create_reader

    try:
        reader = create_reader("", root=str(root), class_map=class_map)
    except (RuntimeError, AssertionError) as e:
        raise RobenchError(f"no images found in {root}: {e}; expected class subfolders of images") from None
    if len(reader) == 0:
        raise RobenchError(f"no images found in {root}; expected class subfolders of images")
    return reader


def _regular_files_only(reader: Any, root: Path, warn: Callable[[str], None] | None) -> None:
    """Leave out of a folder reader's list what is not a regular file (a FIFO, socket or device named like
    an image), with one warning counting them: opening a FIFO waits for a writer, forever.

    A path that cannot be checked stays: reading it fails as an unreadable image, named.
    """
    def special(path: str) -> bool:
        try:
            return not stat.S_ISREG(os.stat(path).st_mode)  # through symlinks; stat never opens the file
        except OSError:
            return False

    skipped = [p for p, _ in reader.samples if special(p)]
    if not skipped:
        return
    left_out = set(skipped)
    reader.samples = [s for s in reader.samples if s[0] not in left_out]
    if not reader.samples:
        raise RobenchError(f"no images found in {root}: its {len(skipped)} image names are not regular files "
                           f"(FIFOs, sockets or devices, e.g. {skipped[0]}); give a folder of image files")
    if warn is not None:
        warn(f"data {root}: {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} named like an image "
             f"{'is not a regular file' if len(skipped) == 1 else 'are not regular files'} (a FIFO, socket or "
             f"device, e.g. {os.path.relpath(skipped[0], root)}) and left out unread")


def load_folder_source(root: Path, limit: int | None = None, seed: int = 0, workers: int = 0,
                       skip_bad: bool = False, class_order: str = "natural", classes: Sequence[str] | None = None,
                       classes_from: str = "the class list", warn: Callable[[str], None] | None = None) -> ImageSource:
    """An ImageFolder directory (class subfolders), listed by timm's folder reader.

    Class indices follow ``classes`` when given (``classes_from`` says whose list it is, for
    messages), else ``class_order``; ``warn`` hears when the natural default and torchvision's
    order disagree, since a model trained with torchvision would silently score wrongly.
    """
    from PIL import Image

    if not root.is_dir():
        raise RobenchError(f"dataset folder not found: {root}; give digits, fashion-mnist[:DIR], mnist:DIR or an "
                           f"image folder")
    reader = _folder_reader(root)
    class_map = folder_class_map(root, list(reader.class_to_idx), class_order, classes, classes_from)
    note = order_warning(root, list(reader.class_to_idx)) if classes is None and class_order == "natural" else None
    if note and warn is not None:
        warn(note)
    if class_map != reader.class_to_idx:
        reader = _folder_reader(root, class_map)
    _regular_files_only(reader, root, warn)
    index = select(len(reader), limit, seed, str(root))
    names = [str(reader._filename(i, basename=False, absolute=False)) for i in range(len(reader))]

    def get(i: int) -> tuple[Any, int, str]:
        """The image as decoded (its own mode: 16-bit stays 16-bit), its label and the hash of its file's bytes."""
        file, label = reader[i]
        with file:
            data = file.read()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image, label, content_digest(data)

    def digest(i: int) -> str:
        file, _ = reader[i]
        with file:
            return content_digest(file.read())

    return ImageSource(
        name=str(root), get=get, index=index, ids=[names[i] for i in index], num_classes=len(class_map),
        classes=sorted(class_map, key=class_map.__getitem__), describe_row=lambda i: str(root / names[i]),
        workers=workers, skip_bad=skip_bad, native=_native(get, index), digest=digest,
    )


def load_timm_source(name: str, split: str, limit: int | None, seed: int, workers: int = 0,
                     skip_bad: bool = False) -> ImageSource:
    """A timm dataset string (``torch/cifar10``, ``hfds/...``); these may download."""
    from timm.data import create_dataset

    from robench.core.cache import cache_dir

    try:
        ds = create_dataset(name, root=str(cache_dir() / "datasets"), split=split, download=True)
    except Exception as e:  # noqa: BLE001 - timm and its back ends raise many kinds
        raise RobenchError(f"cannot open dataset {name} (split {split}): {str(e).splitlines()[0]}") from None
    classes = _class_names(ds)
    if not classes:
        raise RobenchError(f"dataset {name} does not say how many classes it has; use an image folder instead")
    index = select(len(ds), limit, seed, name)
    get = lambda i: (*ds[i][:2], None)  # noqa: E731 - no file to hash: the decoded pixels are
    return ImageSource(
        name=name, get=get, index=index, ids=[f"{name}:{split}:{i}" for i in index],
        num_classes=len(classes), classes=classes, describe_row=lambda i: f"{name}[{i}]", workers=workers,
        skip_bad=skip_bad, native=_native(get, index),
    )


def _class_names(ds: Any) -> list[str]:
    """A timm or torchvision dataset's class names in index order (its ``classes``, or its reader's class_to_idx)."""
    classes = getattr(ds, "classes", None) or getattr(getattr(ds, "reader", None), "class_to_idx", None)
    if isinstance(classes, dict):
        return [str(c) for c in sorted(classes, key=classes.__getitem__)]
    return [str(c) for c in classes] if classes else []


def open_source(
    spec: str, split: str = "test", limit: int | None = None, seed: int = 0, workers: int = 0, skip_bad: bool = False,
    *, class_order: str = "natural", classes: Sequence[str] | None = None, classes_from: str = "the class list",
    warn: Callable[[str], None] | None = None,
) -> Source:
    """``digits`` | ``fashion-mnist[:DIR]`` | ``mnist:DIR`` | ``torch/...`` / ``hfds/...`` | an image folder.

    An image folder with ``train/`` and ``val/`` subfolders gives its splits; else it is one split.
    ``classes`` (named by ``classes_from`` in messages) numbers a folder's classes; other sources
    have their own names, and a list naming other classes is an error (a model of other classes).
    """
    if class_order not in CLASS_ORDERS:
        raise FieldError("class_order", f"{{name}} must be one of {', '.join(CLASS_ORDERS)}, got {class_order!r}")
    if spec == "digits":
        source: Source = load_digits_source(split, limit, seed)
    elif spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        root = Path(spec.partition(":")[2]) if ":" in spec else FASHION_MNIST_DIR
        source = load_fashion_mnist_source(root, split, limit, seed)
    elif spec == "mnist" or spec.startswith("mnist:"):
        if not spec.partition(":")[2]:
            raise FieldError("data", "{name} mnist needs the folder of its IDX files: mnist:DIR")
        source = load_idx_source(Path(spec.partition(":")[2]), "mnist", DIGITS_CLASSES, split, limit, seed)
    elif spec.split("/", 1)[0].lower() in TIMM_PREFIXES:
        source = load_timm_source(spec, split, limit, seed, workers, skip_bad)
    else:
        return load_folder_source(_split_folder(Path(spec), split), limit, seed, workers, skip_bad, class_order,
                                  classes, classes_from, warn)
    if classes is not None and list(classes) != source.classes:
        ours, theirs = few_pair(source.classes, list(classes))
        raise RobenchError(f"data {source.name} has the classes {ours} but {classes_from} names {theirs}; "
                           f"give data of the model's classes, or a model trained on this data")
    return source


def is_folder(spec: str) -> bool:
    """Is a data spec an image folder (not digits, an IDX dataset or a timm dataset string)?"""
    named = spec in ("digits", "fashion-mnist", "mnist") or spec.startswith(("fashion-mnist:", "mnist:"))
    return not named and spec.split("/", 1)[0].lower() not in TIMM_PREFIXES


def has_test_split(spec: str) -> bool:
    """Does ``spec`` hold test data apart from its training data? Built-ins and timm datasets do; a folder
    only with ``val/`` (or ``validation/``, ``test/``) beside ``train/``."""
    if not is_folder(spec):
        return True
    return _split_folder(Path(spec), "train") != _split_folder(Path(spec), "test")


def subset(source: Source, rows: np.ndarray) -> Source:
    """The samples of ``source`` at ``rows`` (positions in its ids), as a source of their own."""
    rows = np.asarray(rows, dtype=np.int64)
    ids = [source.ids[r] for r in rows]
    if isinstance(source, TensorSource):
        return dataclasses.replace(source, images=source.images[rows], labels=source.labels[rows], ids=ids)
    return dataclasses.replace(source, index=source.index[rows], ids=ids, skipped={})


def _split_folder(root: Path, split: str) -> Path:
    """``root/train`` for training, ``root/val`` (or ``validation``, ``test``) for evaluation, else root."""
    names = ("train",) if split == "train" else ("val", "validation", "test")
    return next((root / n for n in names if (root / n).is_dir()), root)
