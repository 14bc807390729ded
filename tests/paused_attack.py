"""Run ``python -m robench ARGS`` held inside a Square attack, where a signal's exception is lost, until released.

Usage: ``python tests/paused_attack.py READY_FD WAIT_FD K ARGS...`` (the two descriptors passed with ``pass_fds``).

The K-th query of Square (``_margin_at``, one forward) writes one line to READY_FD and blocks reading
WAIT_FD. A signal's handler raises there (robench's Terminated for SIGTERM, KeyboardInterrupt for
Ctrl-C), and this wait drops the exception and lets the attack go on, as Python does when a handler's
exception lands in a finalizer or callback ("Exception ignored in ...") or in a library's
``except BaseException``. A run that relies on that exception alone then attacks to the end and
exits 0; the stop request that the handler also records has to stop it at the next query. If the
test goes away, WAIT_FD reads end-of-file and the run goes on: the child never hangs on its own.
Nothing here changes robench beyond that one wait.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import sys

import robench.attacks.square as square


def pause_at(k: int, ready_fd: int, wait_fd: int) -> None:
    """Make Square's k-th query in this process announce itself on ready_fd, then wait on wait_fd, dropping a signal."""
    margin_at, count = square._margin_at, [0]

    def paused(*args, **kwargs):  # type: ignore[no-untyped-def]
        count[0] += 1
        if count[0] == k:
            with contextlib.suppress(KeyboardInterrupt):  # the handler's exception, lost wherever it lands here
                os.write(ready_fd, b"in square\n")
                os.close(ready_fd)
                os.read(wait_fd, 1)
        return margin_at(*args, **kwargs)

    square._margin_at = paused


def main() -> None:
    ready_fd, wait_fd, k = (int(a) for a in sys.argv[1:4])
    for fd in (ready_fd, wait_fd):
        os.set_inheritable(fd, False)  # a process robench starts must not hold the test's pipes open
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as at a terminal (see paused_run.py)
    pause_at(k, ready_fd, wait_fd)
    sys.argv = [sys.argv[0], *sys.argv[4:]]
    runpy.run_module("robench", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
