"""A robench child process held at a known point, so a test can signal it there, and what it kept.

Waiting for a child's files to grow and then signalling raced the clock: on a loaded machine the
child finished first and exited 0. The child script (tests/paused_run.py, tests/paused_attack.py)
says on one pipe that it reached the point, then blocks reading another, which the test closes
only when it is done with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def held_child(script: Path, args: list[str], k: int, ready: str, env: dict[str, str],
               timeout: float = 180) -> Iterator[subprocess.Popen]:
    """``script READY_FD WAIT_FD K ARGS...`` as a child, yielded once it has written the line ``ready``."""
    ready_r, ready_w = os.pipe()
    wait_r, wait_w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, str(script), str(ready_w), str(wait_r), str(k), *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=(ready_w, wait_r))
    finally:
        os.close(ready_w)  # the child's copies only: end-of-file on ready_r then means the child ended
        os.close(wait_r)
    try:
        said = os.read(ready_r, 100) if select.select([ready_r], [], [], timeout)[0] else b""
        if said != f"{ready}\n".encode():
            proc.kill()
            pytest.fail(f"the child did not say {ready!r} in {timeout} s: {proc.communicate()[1]}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.close(ready_r)
        os.close(wait_w)


def state_records(state: Path) -> list[dict]:
    """The resume state file's batch records (header and any torn line left out)."""
    out = []
    for line in (state / "state-rank0.jsonl").read_text().splitlines()[1:]:
        with contextlib.suppress(ValueError):  # a line torn by the kill
            out.append(json.loads(line))
    return out


def same_results(out: Path, uninterrupted: dict) -> dict:
    """The results file at ``out``, after checking it holds what the uninterrupted run wrote (config aside)."""
    doc = json.loads(out.read_text())
    for key in ("rows", "samples", "dataset", "models", "health"):
        assert doc[key] == uninterrupted[key], key
    return doc
