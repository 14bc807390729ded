"""A stop request that long loops honour between iterations: SIGTERM, Ctrl-C or a library caller's own reason.

A signal handler's exception can be lost before it reaches robench: Python runs the handler at
whatever bytecode comes next, which may be a finalizer or a callback whose exceptions are printed
and dropped ("Exception ignored in ..."), or a third-party ``except BaseException``; and a caller
that runs robench in a worker thread gets no signal at all. A request recorded here outlives all
of that: every attack iteration calls ``check_stop``, so a stop takes effect within one iteration.
"""

from __future__ import annotations

_requested: list[KeyboardInterrupt] = []  # at most one: the first reason wins


def request_stop(reason: KeyboardInterrupt | None = None) -> None:
    """Ask every running attack to stop at its next iteration, raising ``reason`` (default: KeyboardInterrupt).

    Safe from a signal handler and from another thread: it only records the reason.
    """
    if not _requested:
        _requested.append(reason if reason is not None else KeyboardInterrupt())


def stop_requested() -> bool:
    """Has a stop been asked for (and not cleared)?"""
    return bool(_requested)


def check_stop() -> None:
    """Raise the requested stop's exception (a KeyboardInterrupt, or a subclass such as Terminated), if any.

    The request stays until ``clear_stop``: a loop that catches the exception and goes on is stopped again
    at its next check.
    """
    if _requested:
        raise type(_requested[0])()


def clear_stop() -> None:
    """Forget a stop request (when the command or call that it stopped has ended)."""
    _requested.clear()
