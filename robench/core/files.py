"""Output files: atomic where they are files, written straight through where they are streams.

A regular file (or a new path) is written to a temporary file beside it and moved into place,
so a failed run never leaves a half-written output. A symlink is written through: its target
is replaced, the link stays. A character device or FIFO (``/dev/null``, a named pipe) is
opened and written, never renamed onto; ``-``, ``/dev/stdout``, ``/dev/stderr`` and
``/dev/fd/N`` are the open stream itself. Anything else (a folder, a socket) is refused.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

STDOUT = "-"  # an output path that means standard output
_FD_PATH = re.compile(r"/(?:dev/fd|proc/(self|\d+)/fd)/(\d+)")
_STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}


def _umask_mode() -> int:
    """The mode a plainly created file would get (mkstemp's own is 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def stream_fd(path: str | Path) -> int | None:
    """The open file descriptor an output path names (``-``, /dev/stdout: 1; /dev/fd/N: N), else None.

    Such a path may point at a file the shell redirected to; replacing that file, or reopening
    it from its start, would lose what the process already wrote there.
    """
    if str(path) == STDOUT:
        return 1
    text = os.path.abspath(path)
    for _ in range(40):  # symlink hops, as the kernel allows
        if text in _STREAMS:
            return _STREAMS[text]
        match = _FD_PATH.fullmatch(text)
        if match and match.group(1) in (None, "self", str(os.getpid())):
            return int(match.group(2))
        if not os.path.islink(text):
            return None
        text = os.path.normpath(os.path.join(os.path.dirname(text), os.readlink(text)))
    return None


def same_output(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (through symlinks and hard links) or one open stream."""
    fa, fb = stream_fd(a), stream_fd(b)
    if fa is not None or fb is not None:
        return fa == fb
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:  # hard links: two names, one file
        return os.path.samefile(a, b)
    except OSError:  # either is not there yet
        return False


def output_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot take an output ("is a folder", ...), or None when it can (before any work)."""
    if stream_fd(path) is not None:
        return None
    try:
        mode = os.stat(path).st_mode  # through symlinks
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as e:
        return f"cannot be checked ({e.strerror})"
    if mode is not None and stat.S_ISDIR(mode):
        return "is a folder; give a file name"
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        return None if os.access(path, os.W_OK) else "is not writable"
    if mode is not None and not stat.S_ISREG(mode):
        return f"is a {_kind(mode)}, not a file; give a file name"
    parent = file_target(Path(path)).parent
    parent = parent if str(parent) else Path(".")
    if not parent.is_dir():
        return f"folder {parent} does not exist; create it first"
    if not os.access(parent, os.W_OK):
        return f"folder {parent} is not writable"
    return _creation_problem(parent)


def folder_problem(folder: Path) -> str | None:
    """Why no file can be created in the existing ``folder`` (not writable, a read-only mount), else None."""
    if not os.access(folder, os.W_OK):
        return f"folder {folder} is not writable"
    return _creation_problem(folder)


STALE_TEMP_AGE = 3600.0  # seconds: a temporary file untouched this long has no live writer (files take < 1 s)


def remove_stale_temps(folder: Path, pattern: str = ".*.tmp", age: float = STALE_TEMP_AGE) -> int:
    """Remove temporary files in ``folder`` untouched for ``age`` seconds; returns how many went.

    A writer killed by SIGKILL never removes its temporary file; left alone they pile up.
    Errors (a file another process removed first, a read-only folder) are ignored.
    """
    import time

    removed, now = 0, time.time()
    for path in folder.glob(pattern):
        try:
            if path.is_file() and not path.is_symlink() and now - path.stat().st_mtime > age:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def _creation_problem(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (/proc, a read-only mount: os.access says yes to root), else None.

    Tried with the temporary file an output is written to first, removed at once.
    """
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".robench-probe.", suffix=".tmp")
    except OSError as e:
        return f"folder {folder} does not take new files ({e.strerror}); write the output elsewhere"
    os.close(fd)
    os.unlink(probe)
    return None


def _kind(mode: int) -> str:
    return "socket" if stat.S_ISSOCK(mode) else "block device" if stat.S_ISBLK(mode) else "special file"


def kind_of(path: str | Path) -> str | None:
    """What an existing path that is no regular file is ("a folder", "a named pipe", ...), through symlinks;
    None for a regular file or a missing path."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind_words(mode)


def _kind_words(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
            else "a character device" if stat.S_ISCHR(mode) else f"a {_kind(mode)}")


def file_target(path: Path) -> Path:
    """The file a path names: a symlink's final target (replaced in place of the link), else the path."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary file, then move it into place (a file) or copy it out (a stream, a device)."""
    from robench.errors import RobenchError

    problem = output_problem(path)
    if problem is not None:
        raise RobenchError(f"output {path} {problem}")
    fd = stream_fd(path)
    if fd is None and not _is_device(path):
        _replace(file_target(path), write)
        return
    data = _render(write, path.suffix)
    if fd is not None:
        _to_stream(fd, data)
    else:
        with open(path, "wb") as f:  # a character device or FIFO: written, never renamed onto
            f.write(data)


def _is_device(path: Path) -> bool:
    """A character device or FIFO, through symlinks."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _replace(target: Path, write: Callable[[Path], object]) -> None:
    """Write beside ``target`` and rename onto it: a failed write leaves the old file whole."""
    from robench.errors import RobenchError

    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.",
                                   suffix=".tmp")
    except OSError as e:  # checked before the run; a folder can change under a long one
        raise RobenchError(f"output {target}: cannot create a file in {target.parent or '.'} ({e.strerror}); "
                           f"write the output elsewhere") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    except OSError as e:  # a full disk, an I/O error: a runtime failure, named in one line
        kept = "the old file is left as it was" if target.exists() else "nothing was written"
        raise WriteFailed(f"cannot write the output {target} ({e.strerror or e}); {kept}", target) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class WriteFailed(RuntimeError):
    """Writing an output failed after its checks passed (a full disk, an I/O error): exit 3, one line.

    ``path`` is the output as the caller named it, so the CLI can say which option it came from.
    """

    code = 3  # the exit code: the machine failed, not the input

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def _render(write: Callable[[Path], object], suffix: str) -> bytes:
    """What ``write`` writes, as bytes (through a temporary file, as writers such as savefig want a path)."""
    fd, tmp = tempfile.mkstemp(prefix=".robench.", suffix=f"{suffix}.tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def _to_stream(fd: int, data: bytes) -> None:
    """Write to an open descriptor: stdout and stderr through Python's streams, so output stays in order."""
    stream = {1: sys.stdout, 2: sys.stderr}.get(fd)
    if stream is None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return
    stream.flush()
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode("utf-8"))
        stream.flush()


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


MiB = 1 << 20
TEXT_LIMIT = 1 * MiB  # a YAML file a person wrote (suites, gates) or a class list: far above any real one
RESULTS_LIMIT = 256 * MiB  # a results JSON: ImageNet's 50,000 ids and a bit per sample per row fit many times


def read_text(path: str | Path, what: str, limit: int = TEXT_LIMIT) -> str:
    """A UTF-8 text file robench was given, of at most ``limit`` bytes: the one reader of input files.

    Missing, unreadable, larger than ``limit``, or not a regular file (a folder, FIFO,
    ``/dev/zero``) is bad input naming ``what`` the file should hold. At most ``limit + 1``
    bytes are read, so an endless or huge file costs no memory; a FIFO is opened without
    waiting for a writer and refused.
    """
    from robench.errors import RobenchError

    try:
        data = _read_regular(path, limit)
    except FileNotFoundError:
        raise RobenchError(f"{what} file not found: {path}") from None
    except _NotRegular as e:
        raise RobenchError(f"{what} file {path} is {e}, not a regular file; give a file") from None
    except OSError as e:
        raise RobenchError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise RobenchError(f"{what} file {path} is larger than {_size(limit)}, the most robench reads from such a "
                           f"file; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RobenchError(f"cannot read {what} file {path}: not UTF-8 text (byte {e.start}); "
                           f"save it as UTF-8") from None


class NotRegular(Exception):
    """The path is no regular file (its kind, e.g. "a named pipe", is the message)."""


_NotRegular = NotRegular


def open_regular(path: str | Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor of the regular file ``path``; NotRegular for anything else, checked on the open file.

    Opened without blocking, so a FIFO fails at once instead of waiting for a writer.
    """
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)  # a created file: rw as umask allows, no x
    except IsADirectoryError:  # a folder opened for writing
        raise NotRegular("a folder") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegular(_kind_words(mode))
    return fd


def _read_regular(path: str | Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a regular file; NotRegular for anything else."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read(limit + 1)


def _size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n} bytes"
