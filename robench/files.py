"""Atomic file writes: a failed run never leaves a half-written output."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask_mode() -> int:
    """The mode a plainly created file would get (mkstemp's own is 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file robench was given; missing or unreadable is bad input naming ``what`` it should hold."""
    from robench.errors import RobenchError

    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RobenchError(f"{what} file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RobenchError(f"cannot read {what} file {path}: {e}") from None
