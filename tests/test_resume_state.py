"""The resume folder shared, replaced, odd or full: issue 26 items 1 and 3, and resume's lines of item 11."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robench.core import files
from robench.engine import resume
from robench.engine.resume import RunState, StateWriteError, kept_samples
from robench.errors import FieldError, Interrupted


def part(*rows: int) -> dict:
    """A finished batch as the engine records it: rows and, per pair, one value per row."""
    r = np.array(rows, dtype=np.int64)
    return {"rows": r, "content": ["c"] * len(r), "pairs": {'["m", "m"]': {"labels": r % 3}}}


def rows(parts: list[dict]) -> list[list[int]]:
    return [p["rows"].tolist() for p in parts]


def test_a_second_job_on_the_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = RunState(tmp_path, "k")
    first.check()
    with pytest.raises(FieldError, match=rf"^resume {tmp_path} is in use by process {os.getpid()} on "
                                         rf"{socket.gethostname()} \(it holds state-rank0.lock\); wait for that run"):
        RunState(tmp_path, "k").check()
    RunState(tmp_path, "k", rank=1).check()  # the ranks of one run share the folder, one lock each
    first.close()
    RunState(tmp_path, "k").check()  # released on close


@pytest.mark.slow  # the child imports torch
def test_the_lock_of_a_killed_job_is_released(tmp_path: Path) -> None:
    """The second job held at a known point: a child process that took the lock and waits."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from robench.engine.resume import RunState; s = RunState(sys.argv[1], 'k');"
         " s.check(); print('locked', flush=True); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(FieldError, match=f"is in use by process {holder.pid} on "):
            RunState(tmp_path, "k").check()
    finally:
        holder.kill()
        holder.wait()
    RunState(tmp_path, "k").check()  # the OS released it with the process


def test_a_file_replaced_during_the_run_is_refused_before_an_append(tmp_path: Path) -> None:
    state = RunState(tmp_path, "k")
    state.check()
    state.append(part(0, 1))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"fingerprint": "theirs", "versions": {}}) + "\n")
    os.replace(other, state.path)  # another job's file moved in
    with pytest.raises(FieldError, match="state-rank0.jsonl was replaced or removed during the run"):
        state.append(part(2))
    state.close()


def test_a_header_rewritten_in_place_is_refused_before_an_append_and_a_load(tmp_path: Path) -> None:
    state = RunState(tmp_path, "k")
    state.check()
    state.append(part(0, 1))
    with state.path.open("r+") as f:  # the same file, another run's header
        f.write(json.dumps({"fingerprint": "x"}) + "\n")
    with pytest.raises(FieldError, match="holds the state of a different run"):
        state.append(part(2))
    with pytest.raises(FieldError, match="holds the state of a different run"):
        state.load()
    state.close()


def test_another_rank_file_of_another_run_is_refused_at_load(tmp_path: Path) -> None:
    """Job A passed its check on an empty folder; job B's rank 1 file appears before A loads."""
    state = RunState(tmp_path, "k")
    state.check()
    (tmp_path / "state-rank1.jsonl").write_text(json.dumps({"fingerprint": "theirs", "versions": {}}) + "\n"
                                                + json.dumps({"part": resume._encode(part(5))}) + "\n")
    with pytest.raises(FieldError, match="holds the state of a different run"):
        state.load()
    state.close()


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "a named pipe"


def _folder(path: Path) -> str:
    path.mkdir()
    return "a folder"


def _device(path: Path) -> str:
    path.symlink_to("/dev/null")
    return "a character device"


@pytest.mark.parametrize("make", [_fifo, _folder, _device], ids=["fifo", "folder", "symlink to device"])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_state_name_that_is_no_regular_file_is_refused_without_hanging(tmp_path: Path, make, rank: int) -> None:
    kind = make(tmp_path / f"state-rank{rank}.jsonl")
    state = RunState(tmp_path, "k")
    with pytest.raises(FieldError, match=rf"^resume {tmp_path}: state-rank{rank}.jsonl is {kind}, not a regular "
                                         "file; remove it or give a new resume folder$"):
        state.check()
    with pytest.raises(FieldError, match=f"is {kind}, not a regular file"):
        state.load() if rank else state.append(part(0))
    assert kept_samples(tmp_path) == 0
    bad = tmp_path / f"state-rank{rank}.jsonl"
    bad.rmdir() if kind == "a folder" else bad.unlink()
    RunState(tmp_path, "k").check()  # the failed check released its lock


def test_lines_that_are_no_record_are_counted_in_one_warning(tmp_path: Path) -> None:
    state = RunState(tmp_path, "k")
    state.append(part(0, 1))
    state.close()
    bad_data = {"part": {"rows": {"dtype": "int64", "shape": [2], "data": "!!"}, "pairs": {}}}
    lines = ["{}", "7", "[1, 2]", '{"part": 3}', json.dumps(bad_data), '{"part": {"rows": [0]}}',
             json.dumps({"fingerprint": "k", "versions": {}}),  # a second header: the same run's file appended
             json.dumps({"part": resume._encode(part(2))}), '{"part": {"ro']  # and a torn line, not counted
    with state.path.open("a") as f:
        f.write("\n".join(lines))
    said: list[str] = []
    assert rows(RunState(tmp_path, "k").load(said.append)) == [[0, 1], [2]]
    assert said == [f"7 lines of {state.path} are JSON but no finished batch; ignored"]
    again = RunState(tmp_path, "k")
    again.check()
    again.append(part(3))  # appends after the torn line, on a line of its own
    again.close()
    assert rows(RunState(tmp_path, "k").load()) == [[0, 1], [2], [3]]


def test_another_run_s_file_joined_to_ours_is_refused(tmp_path: Path) -> None:
    state = RunState(tmp_path, "k")
    state.append(part(0, 1))
    state.close()
    with state.path.open("a") as f:  # cat theirs >> ours: their rows would pass for ours
        f.write(json.dumps({"fingerprint": "theirs", "versions": {}}) + "\n"
                + json.dumps({"part": resume._encode(part(7))}) + "\n")
    with pytest.raises(FieldError, match="holds the state of a different run"):
        RunState(tmp_path, "k").load()


def test_a_folder_that_takes_no_files_is_refused_before_any_work(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)  # root may write a chmod 555 folder; a mount not
    with pytest.raises(FieldError, match=rf"^resume {tmp_path}: folder {tmp_path} does not take new files "
                                         r"\(Read-only file system\)"):
        RunState(tmp_path, "k").check()


def test_a_full_disk_says_what_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = RunState(tmp_path, "k")
    state.check()
    state.append(part(0, 1))

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(resume.os, "fsync", full)
    with pytest.raises(StateWriteError) as caught:
        state.append(part(2, 3))
    assert str(caught.value) == (f"cannot write the resume state {state.path} (No space left on device); the finished "
                                 "batches (2 samples) are kept there: make room and run the same command to go on")
    state.close()


def test_a_full_disk_names_the_output(tmp_path: Path) -> None:
    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "r.json"
    with pytest.raises(files.WriteFailed, match=rf"^cannot write the output {out} \(No space left on device\); "
                                                "nothing was written$"):
        files.atomic_write(out, full)
    assert os.listdir(tmp_path) == []  # no temporary file left


@pytest.mark.parametrize("kept", [False, True])
def test_an_interrupted_run_says_whether_anything_was_kept(tmp_path: Path, kept: bool) -> None:
    from robench.render.console import distributed_run

    if kept:
        RunState(tmp_path, "k").append(part(0, 1))
    with pytest.raises(Interrupted) as caught, distributed_run("cpu", True, tmp_path):
        raise KeyboardInterrupt
    assert str(caught.value) == (f"interrupted; finished batches are kept in {tmp_path}: run the same command to go on"
                                 if kept else f"interrupted; no batch had finished, so nothing was kept in {tmp_path}")


def _aged(path: Path, hours: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half")
    then = time.time() - hours * 3600
    os.utime(path, (then, then))
    return path


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    stale, fresh = _aged(tmp_path / ".robench-probe.a.tmp", 2), _aged(tmp_path / ".robench-probe.b.tmp", 0)
    RunState(tmp_path, "k").check()
    assert not stale.exists() and fresh.exists()


def test_stale_temporary_files_of_the_example_cache_are_removed(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from robench.run.store import ExampleCache

    spec = SimpleNamespace(describe=lambda: {"name": "fgsm"})
    model = SimpleNamespace(spec=SimpleNamespace(label="m"), function=lambda: ["arch", "weights"])
    cache = ExampleCache(tmp_path, [model], 0, ["a", "b"])  # type: ignore[list-item]
    folder = ExampleCache._folder(ExampleCache(tmp_path, [model], 0, ["a", "b"]), "m", spec)  # type: ignore
    stale, fresh = _aged(folder / ".b000000.r0.safetensors.x1.tmp", 2), _aged(folder / ".ef.x2.tmp", 0.1)
    kept = _aged(folder / "b000000.r0.safetensors", 2)
    assert cache._folder("m", spec) == folder  # type: ignore[arg-type]
    assert not stale.exists() and fresh.exists() and kept.exists()


def test_stale_age_is_named_in_the_docs() -> None:
    assert files.STALE_TEMP_AGE == 3600
    text = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    assert "untouched for an hour" in text


SMALL = ["eval", "zoo:resnet-base", "--limit", "10", "--batch-size", "5", "--attacks", "quick", "--eps", "8", "-q",
         "--no-health"]


@pytest.mark.slow
def test_the_cli_refuses_a_folder_in_use_and_says_what_it_resumed(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from robench.cli.main import main

    state, out = tmp_path / "state", tmp_path / "r.json"
    assert CliRunner().invoke(main, [*SMALL, "--resume", str(state)]).exit_code == 0
    holder = RunState(state, "any")
    holder._take_lock()  # another job holds the folder
    res = CliRunner().invoke(main, [*SMALL, "--resume", str(state), "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.stderr.splitlines() == [
        f"robench: error: --resume {state} is in use by process {os.getpid()} on {socket.gethostname()} (it holds "
        "state-rank0.lock); wait for that run to end, or give each job its own --resume folder"]
    holder.close()
    res = CliRunner().invoke(main, [*SMALL, "--resume", str(state), "--out", str(out)])
    assert res.exit_code == 0 and out.exists()
    assert res.stderr.splitlines() == [f"robench: warning: resuming: 10 of 10 samples from {state}"]


@pytest.mark.slow
def test_the_cli_refuses_a_read_only_folder_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from robench.cli.main import main
    from robench.engine import runner

    state, out = tmp_path / "state", tmp_path / "r.json"
    state.mkdir()
    monkeypatch.setattr(resume, "folder_problem", lambda f: f"folder {f} does not take new files (Read-only file "
                                                            "system); write the output elsewhere")
    monkeypatch.setattr(runner, "run_batches", lambda *a, **k: pytest.fail("a batch ran"))
    res = CliRunner().invoke(main, [*SMALL, "--resume", str(state), "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.stderr.splitlines() == [
        f"robench: error: --resume {state}: folder {state} does not take new files (Read-only file system); give a "
        "folder that can be written"]


@pytest.mark.slow
def test_the_cli_names_the_option_of_an_output_the_full_disk_refused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from robench.cli.main import main

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full)  # the rename that publishes a finished output
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, [*SMALL, "--out", str(out)])
    assert res.exit_code == 3 and not out.exists()
    assert res.stderr.splitlines() == [f"robench: error: --out: cannot write the output {out} (No space left on "
                                       "device); nothing was written"]
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left


def test_state_files_are_created_without_execute_bits(tmp_path: Path) -> None:
    state = RunState(tmp_path, "k")
    state.check()
    state.append(part(0, 1))
    state.close()
    assert state.path.stat().st_mode & 0o111 == 0  # rw as the umask allows, like every other output
