"""SIGTERM and Ctrl-C inside a long attack: the run stops within seconds, keeps its finished batches, resumes.

The child (tests/paused_attack.py) is held inside Square's queries on the second batch, and the wait
that holds it drops the signal handler's exception, as a finalizer or a library's ``except
BaseException`` would: only the stop request (robench.core.stop) that the handler also records can
stop the attack then.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from held_child import held_child, same_results, state_records

from robench.cli.main import main
from robench.core.stop import check_stop, request_stop, stop_requested
from robench.errors import Terminated

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
HELD = Path(__file__).parent / "paused_attack.py"
QUERIES = 300  # Square's queries per sample; at eps 1 hardly any sample is fooled, so a batch makes ~all of them
BATCHES = 3


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "long.yaml"
    path.write_text(f"eps: [1]\nattacks:\n  - name: square\n    queries: {QUERIES}\n")
    return path


def _args(suite: Path) -> list[str]:
    return ["eval", "zoo:effnet-base", "--limit", str(10 * BATCHES), "--batch-size", "10", "--attacks", str(suite),
            "-q", "--no-health"]


def _held_in_square(args: list[str], k: int,
                    timeout: float = 180) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """``robench ARGS`` in a child held at Square's k-th query, a signal's exception there dropped."""
    return held_child(HELD, args, k, "in square", ENV, timeout)


def _kept_rows(state: Path) -> list[int]:
    """The sample rows of the batches kept in the state folder (header and any torn line left out)."""
    rows: list[int] = []
    for record in state_records(state):
        rows += np.frombuffer(base64.b64decode(record["part"]["rows"]["data"]), dtype=np.int64).tolist()
    return rows


@pytest.fixture(scope="module")
def uninterrupted(suite: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("clean") / "r.json"
    res = CliRunner().invoke(main, [*_args(suite), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "said"), [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                      (signal.SIGINT, 130, "interrupted")], ids=["sigterm", "ctrl-c"])
def test_a_signal_inside_a_long_attack_stops_it_within_seconds_and_the_rerun_finishes(
        tmp_path: Path, suite: Path, uninterrupted: dict, signum: int, code: int, said: str) -> None:
    state, out = tmp_path / "state", tmp_path / "r.json"
    args = [*_args(suite), "--resume", str(state), "--out", str(out)]
    with _held_in_square(args, QUERIES + 50) as proc:  # the second batch's 50th query or so: one batch kept
        kept = _kept_rows(state)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    assert proc.returncode == code, f"exit {proc.returncode}: the attack went on to the end ({err!r})"
    assert err.strip().splitlines()[-1] == (
        f"robench: error: {said}; finished batches are kept in {state}: run the same command to go on")
    assert took < 10, f"{took:.1f} s from the signal to the exit"
    assert not out.exists() and kept == list(range(10)) and _kept_rows(state) == kept  # the first batch, as it was
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert sorted(_kept_rows(state)) == list(range(10 * BATCHES))  # the rest computed once each
    same_results(out, uninterrupted)


def test_the_cli_s_stop_request_ends_with_its_command() -> None:
    # a stop asked for inside a command stops it (143 for robench's Terminated) and is forgotten after,
    # so a later command in the same process (CliRunner, a notebook) runs; Ctrl-C's handler is back too
    before = signal.getsignal(signal.SIGINT)
    seen = []

    @main.command("stop-now")
    def stop_now() -> None:
        seen.append(signal.getsignal(signal.SIGINT))
        request_stop(Terminated())
        check_stop()

    try:
        res = CliRunner().invoke(main, ["stop-now"])
    finally:
        main.commands.pop("stop-now")
    assert (res.exit_code, res.stderr.strip()) == (143, "robench: error: terminated (SIGTERM)")
    assert not stop_requested() and signal.getsignal(signal.SIGINT) is before
    assert seen[0] is not before if before is signal.default_int_handler else seen[0] is before
