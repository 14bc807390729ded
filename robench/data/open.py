"""Data specs: open one as a source, tell an image folder from a named dataset, and take an opened source's rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from robench.data.builtin import DIGITS_CLASSES, TensorSource, load_digits_source
from robench.data.classes import CLASS_ORDERS, few_pair
from robench.data.folders import _split_folder, load_folder_source
from robench.data.idx import FASHION_MNIST_DIR, load_fashion_mnist_source, load_idx_source
from robench.data.images import ImageSource
from robench.data.inputs import Source
from robench.data.timm_sets import TIMM_PREFIXES, load_timm_source
from robench.errors import FieldError, RobenchError


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
    if isinstance(source, ImageSource):
        return dataclasses.replace(source, index=source.index[rows], ids=ids, skipped={})
    raise TypeError(f"subset takes a TensorSource or an ImageSource, got a {type(source).__name__}")
