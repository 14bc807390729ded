"""Progress inside an attack: a sink the caller sets, told at every attack iteration.

An attack's batch can run for many minutes; progress reported only when it ends left a bar
still and a log silent that long. Attacks call ``robench.core.stop.check_stop`` once per
iteration already; that one call also tells the sink set here, so attacks carry no second
set of calls and know nothing of who listens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

_sinks: list[Callable[[], None]] = []  # the innermost caller's sink last


@contextmanager
def iterations_to(sink: Callable[[], None]) -> Iterator[None]:
    """Call ``sink`` at every attack iteration while the block runs."""
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)


def iteration() -> None:
    """An attack iteration is starting: tell the sink, if one is set."""
    if _sinks:
        _sinks[-1]()
