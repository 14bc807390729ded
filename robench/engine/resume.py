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
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from robench.errors import FieldError

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


def _first_line(path: Path) -> str | None:
    """A state file's first line (its header), or None if it has no whole one (empty, or torn)."""
    with path.open("rb") as f:
        first = f.readline()
    return first.decode("utf-8", errors="replace") if first.endswith(b"\n") else None


class RunState:
    """The state folder of one run, as seen by one rank.

    ``versions`` (name -> version) are recorded beside the fingerprint, so a state written by
    other versions is refused with a message naming them.
    """

    def __init__(self, folder: Path, key: str, rank: int = 0, versions: dict[str, str] | None = None) -> None:
        self.folder, self.key, self.rank, self.versions = Path(folder), key, rank, versions or {}
        self._file: TextIO | None = None

    def check(self) -> None:
        """Fail before any work if the folder is unusable or belongs to another run or other versions."""
        if self.folder.exists() and not self.folder.is_dir():
            raise FieldError("resume", f"{{name}} {self.folder} is a file; give a folder for the run's state")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FieldError("resume", f"{{name}} {self.folder} cannot be created ({e.strerror}); "
                             f"give a folder that can be written") from None
        for path in sorted(self.folder.glob(STATE_GLOB)) if self.folder.is_dir() else []:
            first = _first_line(path)
            if first is None:
                continue  # nothing kept yet: fresh
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

    def load(self) -> list[dict[str, Any]]:
        """Finished batches' parts, from every rank's file; a torn last line is ignored."""
        parts = []
        for path in sorted(self.folder.glob(STATE_GLOB)) if self.folder.is_dir() else []:
            for line in path.read_text(encoding="utf-8").splitlines()[1:]:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # the line being written when the run was killed
                parts.append(_decode(rec["part"]))
        return parts

    def append(self, part: dict[str, Any]) -> None:
        """Record one finished batch (the engine's outcomes of its rows), durably, before the next starts."""
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"state-rank{self.rank}.jsonl"
            fresh = not path.exists() or _first_line(path) is None  # a file without its header starts over
            torn = not fresh and not path.read_bytes().endswith(b"\n")
            self._file = path.open("w" if fresh else "a", encoding="utf-8")
            if fresh:
                self._write({"fingerprint": self.key, "versions": self.versions})
            elif torn:  # end the line a killed run left half-written, so the next record stands alone
                self._file.write("\n")
        self._write({"part": _encode(part)})

    def _write(self, record: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close this rank's file (the state stays for later runs)."""
        if self._file is not None:
            self._file.close()
            self._file = None
