"""Image folders (class subfolders of images) as sources, listed by robench's own walker, and their splits."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from robench.core.files import kind_of
from robench.data.classes import folder_class_map, order_warning
from robench.data.digests import content_digest
from robench.data.images import ImageSource, _native
from robench.data.inputs import select
from robench.errors import RobenchError

# Formats PIL identifies but cannot decode on its own: stubs waiting for a plugin (BUFR, GRIB, HDF5, WMF off
# Windows), MPEG (identified, never decoded) and EPS (Ghostscript). Their files are left out, counted in a warning.
UNDECODED_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"})


def image_extensions() -> tuple[dict[str, str], dict[str, str]]:
    """Extension -> format for the formats PIL reads, and for those it names but leaves undecoded (UNDECODED_FORMATS).

    PIL's own registry rather than timm's list (.png, .jpg, .jpeg): GIF, BMP, WebP or TIFF images were
    silently dropped.
    """
    from PIL import Image

    Image.init()
    opened = {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    read = {ext: fmt for ext, fmt in opened.items() if fmt not in UNDECODED_FORMATS}
    return read, {ext: fmt for ext, fmt in opened.items() if fmt in UNDECODED_FORMATS}


@dataclass
class Listing:
    """What walking an image folder found; paths are relative to the folder."""

    samples: list[tuple[str, str]] = field(default_factory=list)  # (image, its class folder's name)
    repeated: list[str] = field(default_factory=list)  # folders reached a second time (a loop, a second link)
    special: list[str] = field(default_factory=list)  # FIFOs, sockets and devices named like an image
    undecoded: list[tuple[str, str]] = field(default_factory=list)  # (file, format) PIL names but cannot decode


def escaped(path: str) -> str:
    """A path as printable text, any byte that is not UTF-8 written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(rel: str, root: Path) -> str:
    """``rel``, refused when it is not UTF-8: ids are written as UTF-8 text, which would fail after all the work."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise RobenchError(f"data {root}: the file name {escaped(rel)} is not UTF-8 and cannot be recorded as a "
                           f"sample id; rename it to UTF-8 (convmv renames a whole folder: see docs/data.md)") from None
    return rel


class _Walk:
    """One walk of an image folder: each folder once (by device and inode), the real tree before linked folders.

    Linked folders come last so that a folder reached both directly and through a symlink keeps its own
    name as its class; os.walk (timm's walker) follows a loop until the path is too long.
    """

    def __init__(self, root: Path) -> None:
        self.root, self.listing = root, Listing()
        self.seen: set[tuple[int, int]] = set()
        self.links: list[str] = []
        self.read, self.undecoded = image_extensions()

    def run(self) -> Listing:
        self.folder(str(self.root))
        while self.links:
            self.folder(self.links.pop(0))
        self.listing.samples.sort(key=lambda s: _natural(os.path.join(self.root, s[0])))
        return self.listing

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def folder(self, path: str) -> None:
        found = os.stat(path)
        key = (found.st_dev, found.st_ino)
        if key in self.seen:
            self.listing.repeated.append(self.rel(path))
            return
        self.seen.add(key)
        subfolders = []
        for entry in self.entries(path):
            if not entry.is_dir():
                self.file(entry)
            elif entry.is_symlink():
                self.links.append(entry.path)
            else:
                subfolders.append(entry.path)
        for sub in subfolders:
            self.folder(sub)

    def entries(self, path: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as found:
                return sorted(found, key=lambda e: _natural(e.name))
        except OSError as e:
            where = "the folder itself" if path == str(self.root) else f"its folder {escaped(self.rel(path))}"
            raise RobenchError(f"data {self.root}: cannot read {where}: {e.strerror}; make it readable "
                               f"(chmod u+rx) or move it out of the data folder") from None

    def file(self, entry: os.DirEntry[str]) -> None:
        ext, rel = os.path.splitext(entry.name)[1].lower(), self.rel(entry.path)
        if ext in self.undecoded:
            self.listing.undecoded.append((rel, self.undecoded[ext]))
        if ext not in self.read:
            return
        _utf8(rel, self.root)
        if _special(entry):
            self.listing.special.append(rel)
        elif not os.access(entry.path, os.R_OK):
            raise RobenchError(f"data {self.root}: cannot read the image {escaped(rel)} (permission denied or a "
                               f"broken link); make it readable or move it out of the data folder")
        else:
            self.listing.samples.append((rel, os.path.basename(os.path.dirname(rel))))


def _natural(name: str) -> list[int | str]:
    from timm.utils.misc import natural_key

    return natural_key(name)


def _special(entry: os.DirEntry[str]) -> bool:
    """Is it a FIFO, socket or device (not a regular file)? Opening a FIFO waits for a writer, forever.

    A path that cannot be checked is not special: the readability check names it.
    """
    try:
        return not stat.S_ISREG(entry.stat().st_mode)  # through symlinks; stat never opens the file
    except OSError:
        return False


def list_folder(root: Path, warn: Callable[[str], None] | None = None) -> list[tuple[str, str]]:
    """The images of a folder as (relative path, class folder name), naturally sorted, with one warning for
    each kind of thing left out (repeated folders, special files, formats PIL cannot decode alone)."""
    listing = _Walk(root).run()
    if not listing.samples:
        raise RobenchError(_none_found(root, listing))
    for note in _notes(root, listing):
        if warn is not None:
            warn(note)
    return listing.samples


def _none_found(root: Path, listing: Listing) -> str:
    if listing.special:
        n = len(listing.special)
        return (f"no images found in {root}: its {n} image names are not regular files (FIFOs, sockets or "
                f"devices, e.g. {root / listing.special[0]}); give a folder of image files")
    return f"no images found in {root}; expected class subfolders of images"


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _notes(root: Path, listing: Listing) -> list[str]:
    """One warning line per kind of thing left out of ``listing``."""
    notes = []
    if listing.repeated:
        n = len(listing.repeated)
        notes.append(f"data {root}: {n} folder{'' if n == 1 else 's'} reached a second time (a symlink loop or a "
                     f"second link to one folder, e.g. {escaped(listing.repeated[0])}) read once")
    if listing.special:
        n = len(listing.special)
        verb = "is not a regular file" if n == 1 else "are not regular files"
        notes.append(f"data {root}: {_entries(n)} named like an image {verb} (a FIFO, socket or device, "
                     f"e.g. {escaped(listing.special[0])}) and left out unread")
    if listing.undecoded:
        (rel, fmt), n = listing.undecoded[0], len(listing.undecoded)
        notes.append(f"data {root}: {n} file{'' if n == 1 else 's'} in formats PIL cannot decode without a plugin "
                     f"or program (e.g. {escaped(rel)}, {fmt}) left out")
    return notes


def load_folder_source(root: Path, limit: int | None = None, seed: int = 0, workers: int = 0,
                       skip_bad: bool = False, class_order: str = "natural", classes: Sequence[str] | None = None,
                       classes_from: str = "the class list", warn: Callable[[str], None] | None = None) -> ImageSource:
    """An ImageFolder directory (class subfolders), listed by ``list_folder``.

    Class indices follow ``classes`` when given (``classes_from`` says whose list it is, for
    messages), else ``class_order``; ``warn`` hears when the natural default and torchvision's
    order disagree, since a model trained with torchvision would silently score wrongly.
    """
    from PIL import Image

    if not root.is_dir():
        kind = kind_of(root) or ("a file" if root.exists() else None)
        what = f"dataset {root} is {kind}, not a folder" if kind else f"dataset folder not found: {root}"
        raise RobenchError(f"{what}; give digits, fashion-mnist[:DIR], mnist:DIR or an image folder")
    found = list_folder(root, warn)
    folders = sorted({label for _, label in found}, key=_natural)
    class_map = folder_class_map(root, folders, class_order, classes, classes_from)
    note = order_warning(root, folders) if classes is None and class_order == "natural" else None
    if note and warn is not None:
        warn(note)
    names, labels = [rel for rel, _ in found], [class_map[label] for _, label in found]
    index = select(len(names), limit, seed, str(root))

    def read(i: int) -> bytes:
        with open(root / names[i], "rb") as file:
            return file.read()

    def get(i: int) -> tuple[Image.Image, int, str]:
        """The image as decoded (its own mode: 16-bit stays 16-bit), its label and the hash of its file's bytes."""
        data = read(i)
        image = Image.open(io.BytesIO(data))
        image.load()
        return image, labels[i], content_digest(data)

    return ImageSource(
        name=str(root), get=get, index=index, ids=[names[i] for i in index], num_classes=len(class_map),
        classes=sorted(class_map, key=class_map.__getitem__), describe_row=lambda i: str(root / names[i]),
        workers=workers, skip_bad=skip_bad, native=_native(get, index), digest=lambda i: content_digest(read(i)),
    )


def _split_folder(root: Path, split: str) -> Path:
    """``root/train`` for training, ``root/val`` (or ``validation``, ``test``) for evaluation, else root."""
    names = ("train",) if split == "train" else ("val", "validation", "test")
    return next((root / n for n in names if (root / n).is_dir()), root)
