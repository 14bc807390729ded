"""Run ``python -m robench ARGS`` so that it stops after its K-th finished batch until the test lets it go on.

Usage: ``python tests/paused_run.py READY_FD WAIT_FD K ARGS...`` (the two descriptors passed with ``pass_fds``).

The signal tests in test_faults.py interrupt a run between batches. Waiting for the resume state to
grow and then signalling races the clock: on a loaded machine the child finished every batch first
and exited 0. Here the K-th ``RunState.append`` (made durable before it returns) writes one line to
READY_FD and then blocks reading WAIT_FD, so the signal always lands on a run with exactly K batches
kept and more to do. The blocking read is where a signal's handler raises (KeyboardInterrupt for
SIGINT, robench's Terminated for SIGTERM), as it would between any two batches. If the test goes
away, WAIT_FD reads end-of-file and the run goes on: the child never hangs on its own.
Nothing here changes robench: it runs robench's ``__main__`` as ``python -m robench`` does.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

from robench.engine.resume import RunState


def pause_after(k: int, ready_fd: int, wait_fd: int) -> None:
    """Make the k-th RunState.append of this process announce itself on ready_fd, then wait on wait_fd."""
    append, count = RunState.append, [0]

    def paused_append(self: RunState, part: dict) -> None:
        append(self, part)
        count[0] += 1
        if count[0] == k:
            os.write(ready_fd, f"{k} batches kept\n".encode())
            os.close(ready_fd)
            os.read(wait_fd, 1)  # a signal's handler raises here; end-of-file lets the run go on

    RunState.append = paused_append  # type: ignore[method-assign]


def main() -> None:
    ready_fd, wait_fd, k = (int(a) for a in sys.argv[1:4])
    for fd in (ready_fd, wait_fd):
        os.set_inheritable(fd, False)  # a process robench starts must not hold the test's pipes open
    # Ctrl-C as at a terminal: a shell without job control starts background commands with SIGINT
    # ignored, and Python then leaves it ignored, so a test run from such a shell could not interrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pause_after(k, ready_fd, wait_fd)
    sys.argv = [sys.argv[0], *sys.argv[4:]]
    runpy.run_module("robench", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
