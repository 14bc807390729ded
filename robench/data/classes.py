"""Class lists: their orders, checks and file, a folder's class numbering, and lists in one-line messages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from robench.core.files import read_text
from robench.errors import FieldError, FieldNote, RobenchError

CLASS_ORDERS = ("natural", "lexical")  # natural: timm's (1, 2, 10); lexical: torchvision's ImageFolder (1, 10, 2)
SHOWN_NAMES = 5  # class names a message shows of a list


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
    return FieldNote(f"data {root}: class folders sort differently naturally ({shown[0]}) and as strings "
                     f"({shown[1]}, as torchvision's ImageFolder does); robench uses natural order: pass "
                     f"{{class_order}} lexical if the model was trained with torchvision, or {{classes}} FILE",
                     "class_order", "classes")


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
