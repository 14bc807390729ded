"""Resumable runs: per-sample outcomes appended to a state folder as batches finish.

A long run killed at any moment (SIGKILL included) loses at most the batches in flight:
each finished batch is one JSON line, flushed and fsynced, in ``state-rank<R>.jsonl``
(one file per torchrun rank, so ranks never write the same file). The first line of
each file is the run's fingerprint: everything that decides the numbers (models and
their weights, samples, suite, seed). A restarted run with the same fingerprint takes
every finished sample from every file and computes only the rest; one with another
fingerprint is refused. Results do not depend on batch size or world size (per-sample
losses and noise), so those may change between the runs.
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


class RunState:
    """The state folder of one run, as seen by one rank."""

    def __init__(self, folder: Path, key: str, rank: int = 0) -> None:
        self.folder, self.key, self.rank = Path(folder), key, rank
        self._file: TextIO | None = None

    def check(self) -> None:
        """Fail before any work if the folder is unusable or belongs to another run."""
        if self.folder.exists() and not self.folder.is_dir():
            raise FieldError("resume", f"{{name}} {self.folder} is a file; give a folder for the run's state")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FieldError("resume", f"{{name}} {self.folder} cannot be created ({e.strerror}); "
                             f"give a folder that can be written") from None
        for path in sorted(self.folder.glob(STATE_GLOB)) if self.folder.is_dir() else []:
            first = path.open(encoding="utf-8").readline()
            try:
                theirs = json.loads(first)["fingerprint"]
            except (ValueError, KeyError, TypeError):
                raise FieldError("resume", f"{path} is not a robench state file; give a new {{name}} folder") from None
            if theirs != self.key:
                raise FieldError("resume", f"{{name}} {self.folder} holds the state of a different run (other models, "
                                 "preprocessing, data, attacks, cascade/early_stop or seed); rerun that exact command, "
                                 "or give a new {name} folder")

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
            fresh = not path.exists() or path.stat().st_size == 0
            torn = not fresh and not path.read_bytes().endswith(b"\n")
            self._file = path.open("a", encoding="utf-8")
            if fresh:
                self._write({"fingerprint": self.key})
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
