"""Image folders (class subfolders of images) as sources, listed by timm's folder reader, and their splits."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robench.data.classes import folder_class_map, order_warning
from robench.data.digests import content_digest
from robench.data.images import ImageSource, _native
from robench.data.inputs import select
from robench.errors import RobenchError


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

    def get(i: int) -> tuple[Image.Image, int, str]:
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


def _split_folder(root: Path, split: str) -> Path:
    """``root/train`` for training, ``root/val`` (or ``validation``, ``test``) for evaluation, else root."""
    names = ("train",) if split == "train" else ("val", "validation", "test")
    return next((root / n for n in names if (root / n).is_dir()), root)
