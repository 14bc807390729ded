"""Resumable runs: per-sample outcomes appended to a state folder as batches finish.

A long run killed at any moment (SIGKILL included) loses at most the batches in flight:
each finished batch is one JSON line, flushed and fsynced, in ``state-rank<R>.jsonl``
(one file per torchrun rank, so ranks never write the same file). The first line of
each file is the run's fingerprint: everything that decides the numbers (models, their
code and weights, samples, suite, seed, and the robench, torch and timm versions, also kept
in plain form to name them). A restarted run with the same fingerprint takes every
finished sample from every file and computes only the rest; one with other versions or
another fingerprint is refused. A file without a whole first line (empty, or killed
while writing it) holds nothing yet and counts as fresh. Results do not depend on batch
size or world size (per-sample losses and noise), so those may change between the runs.

Each rank holds an exclusive lock on ``state-rank<R>.lock`` for the whole run, so a second
job on the same folder is refused at once, naming the process that holds it; and every
header is read again before each load and append, so files replaced during a run are caught.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from robench.core.files import NotRegular, WriteFailed, folder_problem, open_regular, remove_stale_temps
from robench.errors import FieldError, RobenchError

STATE_GLOB = "state-rank*.jsonl"


def fingerprint(record: dict[str, Any]) -> str:
    """SHA-256 of a plain-data description of what decides the numbers."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _encode(value: Any) -> Any:
    """Arrays (at any depth of dicts) as {dtype, shape, data}; other values as they are."""
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"dtype": str(value.dtype), "shape": list(value.shape),
                "data": base64.b64encode(value.tobytes()).decode("ascii")}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"dtype", "shape", "data"}:
        return np.frombuffer(base64.b64decode(value["data"]), dtype=value["dtype"]).reshape(value["shape"]).copy()
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


class StateWriteError(WriteFailed):
    """Appending to the state failed (a full disk, an I/O error): a runtime failure, with one clear line."""


def _read_state(path: Path) -> bytes:
    """A state file's bytes; FieldError when it is no regular file (a folder, FIFO, device) or unreadable."""
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            return f.read()
    except NotRegular as e:
        raise FieldError("resume", f"{{name}} {path.parent}: {path.name} is {e}, not a regular file; remove it "
                                   "or give a new {name} folder") from None
    except OSError as e:
        raise FieldError("resume", f"{{name}} {path.parent}: {path.name} cannot be read ({e.strerror}); "
                                   "give a new {name} folder") from None


def _header(data: bytes) -> str | None:
    """A state file's first line (its header), or None if it has no whole one (empty, or torn)."""
    first, newline, _ = data.partition(b"\n")
    return first.decode("utf-8", errors="replace") if newline else None


def _part(line: str) -> dict[str, Any] | None:
    """The finished batch a state line records, or None if it is no such record (torn, ``{}``, ``7``, bad data)."""
    try:
        rec = json.loads(line)
        part = _decode(rec["part"]) if isinstance(rec, dict) and isinstance(rec.get("part"), dict) else None
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    if part is None or not isinstance(part.get("rows"), np.ndarray) or part["rows"].ndim != 1:
        return None
    n, pairs = len(part["rows"]), part.get("pairs")
    if part["rows"].dtype.kind not in "iu" or not isinstance(pairs, dict):
        return None
    arrays = [v for p in pairs.values() if isinstance(p, dict) for v in p.values()]
    if len(arrays) != sum(len(p) if isinstance(p, dict) else 1 for p in pairs.values()):
        return None
    return part if all(isinstance(v, np.ndarray) and v.shape[-1:] == (n,) for v in arrays) else None


def kept_samples(folder: Path) -> int:
    """How many samples the finished batches in a state folder hold (0 when none, or unreadable)."""
    total = 0
    for path in sorted(Path(folder).glob(STATE_GLOB)) if Path(folder).is_dir() else []:
        try:
            lines = _read_state(path).decode("utf-8", errors="replace").splitlines()[1:]
        except RobenchError:
            continue
        total += sum(len(p["rows"]) for p in map(_part, lines) if p is not None)
    return total


class RunState:
    """The state folder of one run, as seen by one rank.

    ``versions`` (name -> version) are recorded beside the fingerprint, so a state written by
    other versions is refused with a message naming them.
    """

    def __init__(self, folder: Path, key: str, rank: int = 0, versions: dict[str, str] | None = None) -> None:
        self.folder, self.key, self.rank, self.versions = Path(folder), key, rank, versions or {}
        self._file: BinaryIO | None = None
        self._lock: BinaryIO | None = None  # a file object: a RunState dropped unclosed releases it too

    @property
    def path(self) -> Path:
        """This rank's state file."""
        return self.folder / f"state-rank{self.rank}.jsonl"

    def check(self) -> None:
        """Fail before any work if the folder is unusable, in use, or belongs to another run or other versions.

        Takes this rank's lock, held until ``close``.
        """
        if self.folder.exists() and not self.folder.is_dir():
            raise FieldError("resume", f"{{name}} {self.folder} is a file; give a folder for the run's state")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FieldError("resume", f"{{name}} {self.folder} cannot be created ({e.strerror}); "
                             f"give a folder that can be written") from None
        problem = folder_problem(self.folder)
        if problem is not None:
            raise FieldError("resume", f"{{name}} {self.folder}: {problem.split(';')[0]}; give a folder that can be "
                                       "written")
        self._take_lock()
        remove_stale_temps(self.folder)
        try:
            for path in sorted(self.folder.glob(STATE_GLOB)):
                self._check_header(path, _header(_read_state(path)))
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        """This rank's exclusive lock on the folder, or FieldError naming the process (pid, host) that holds it.

        flock, not lockf: two opens in one process exclude each other too. The OS releases it
        when the process ends, however it ends. Windows has no flock: there the folder is not locked.
        """
        try:
            import fcntl
        except ImportError:  # Windows
            return
        path = self.folder / f"state-rank{self.rank}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").split()
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise FieldError("resume", f"{{name}} {self.folder}: {path.name} cannot be locked ({e.strerror}); "
                                           "give a folder on a file system that locks") from None
            who = f"process {holder[0]} on {holder[1]}" if len(holder) == 2 else "another process"
            raise FieldError("resume", f"{{name}} {self.folder} is in use by {who} (it holds {path.name}); wait "
                                       "for that run to end, or give each job its own {name} folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._lock = os.fdopen(fd, "r+b")

    def _check_header(self, path: Path, first: str | None) -> None:
        """Refuse a state file whose header is another run's (None: no whole header, nothing kept yet)."""
        if first is None:
            return
        try:
            header = json.loads(first)
            theirs = header["fingerprint"]
        except (ValueError, KeyError, TypeError):
            raise FieldError("resume", f"{path} is not a robench state file; give a new {{name}} folder") from None
        self._check_versions(header.get("versions"))
        if theirs != self.key:
            raise FieldError("resume", f"{{name}} {self.folder} holds the state of a different run (other models, "
                             "preprocessing, data, attacks, cascade/early_stop or seed); rerun that exact command, "
                             "or give a new {name} folder")

    def _check_versions(self, theirs: Any) -> None:
        """Refuse a state written by other versions, naming those that differ."""
        recorded = isinstance(theirs, dict)
        differ = [k for k in self.versions if not recorded or theirs.get(k) != self.versions[k]]
        if not differ:
            return
        ours = ", ".join(f"{k} {self.versions[k]}" for k in differ)
        written = ", ".join(f"{k} {theirs.get(k, '(not recorded)')}" for k in differ) if recorded \
            else "an earlier robench, which did not record its versions"
        raise FieldError("resume", f"{{name}} {self.folder} was written by {written}; this is {ours}, and the two "
                         "would mix results of different code: remove the folder, give a new {name} folder, "
                         "or resume with the versions that wrote it")

    def load(self, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Finished batches' parts, from every rank's file, each file's header checked again first.

        A line that is no record (``{}``, ``7``, a part that does not decode, the same run's
        header again where two files were joined) is left out, and ``warn`` hears how many per
        file; a line torn by a kill is left out silently, and another run's header refuses the file.
        """
        parts = []
        for path in sorted(self.folder.glob(STATE_GLOB)) if self.folder.is_dir() else []:
            data = _read_state(path)
            self._check_header(path, _header(data))
            found, ignored = self._records(path, data.decode("utf-8", errors="replace").splitlines()[1:])
            parts += found
            if ignored and warn is not None:
                warn(f"{ignored} line{'s' if ignored > 1 else ''} of {path} {'are' if ignored > 1 else 'is'} JSON "
                     "but no finished batch; ignored")
        return parts

    def _records(self, path: Path, lines: list[str]) -> tuple[list[dict[str, Any]], int]:
        """The finished batches among a file's lines after its header, and how many other JSON lines were left out."""
        parts, ignored = [], 0
        for line in lines:
            part = _part(line)
            if part is not None:
                parts.append(part)
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # the line being written when a run was killed: expected, not counted
            if isinstance(rec, dict) and "fingerprint" in rec:  # two files joined: the rest must be ours too
                self._check_header(path, line)
            ignored += 1
        return parts, ignored

    def append(self, part: dict[str, Any]) -> None:
        """Record one finished batch (the engine's outcomes of its rows), durably, before the next starts.

        The file's header is checked again first: a file replaced during the run is refused,
        never appended to. A failed write (a full disk) is a StateWriteError naming the file.
        """
        try:
            if self._file is None:
                self._open()
            else:
                self._check_own()
            self._write({"part": _encode(part)})
        except OSError as e:
            kept = kept_samples(self.folder)
            raise StateWriteError(f"cannot write the resume state {self.path} ({e.strerror or e}); "
                                  + (f"the finished batches ({kept} samples) are kept there: make room and run the "
                                     "same command to go on" if kept else "no batch was kept"), self.folder) from None

    def _open(self) -> None:
        """Open this rank's file to append, starting it with the header if it has none."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)
        except NotRegular as e:
            raise FieldError("resume", f"{{name}} {self.folder}: {self.path.name} is {e}, not a regular file; "
                                       "remove it or give a new {name} folder") from None
        self._file = os.fdopen(fd, "r+b", buffering=0)  # unbuffered: a failed write is known at once
        data = self._file.read()
        first = _header(data)
        self._check_header(self.path, first)
        if first is None:  # a file without its header starts over
            self._file.seek(0)
            self._file.truncate()
            self._write({"fingerprint": self.key, "versions": self.versions})
        elif not data.endswith(b"\n"):  # end the line a killed run left half-written, so the next stands alone
            self._file.write(b"\n")

    def _check_own(self) -> None:
        """Refuse to append when this rank's file was replaced, removed or rewritten since it was opened."""
        assert self._file is not None
        try:
            now, ours = os.stat(self.path), os.fstat(self._file.fileno())
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (ours.st_dev, ours.st_ino):
            raise FieldError("resume", f"{{name}} {self.folder}: {self.path.name} was replaced or removed during "
                                       "the run; give each job its own {name} folder")
        self._file.seek(0)
        self._check_header(self.path, _header(self._file.readline()))

    def _write(self, record: dict[str, Any]) -> None:
        """One line, whole and on disk, or (a full disk) none: a part of one is cut off again."""
        assert self._file is not None
        end = self._file.seek(0, os.SEEK_END)
        try:
            self._file.write((json.dumps(record) + "\n").encode("utf-8"))
            os.fsync(self._file.fileno())
        except OSError:
            os.ftruncate(self._file.fileno(), end)
            raise

    def close(self) -> None:
        """Close this rank's file and release its lock (the state stays for later runs)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
