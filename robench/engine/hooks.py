"""What a run reports to and keeps in, beyond its outcomes: progress, warnings, status, resume state, store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from robench.engine.plan import ExampleStore
from robench.engine.resume import RunState

Warn = Callable[[str], None]
Progress = Callable[[str, float, int], None]  # (what, images done, images total): at the start, per attack, per batch
Status = Callable[[str, str], None]  # (what, what it is doing now): e.g. ("eval", "pgd on resnet")


@dataclass
class Hooks:
    """What a run reports to and keeps in, beyond its outcomes."""

    progress: Progress | None = None
    warn: Warn | None = None
    state: RunState | None = None  # resume: finished batches are appended here, and taken from here
    store: ExampleStore | None = None  # examples kept between runs (transfer's cache)
    what: str = "eval"  # the progress bar's label
    status: Status | None = None  # hears which attack on which source is running


class Tracker:
    """Progress within a batch: the stage now, and the share of the batch done after each (source, attack).

    A batch under every attack can take minutes; a log that moved only per batch stayed
    silent that long. A piece retried after out-of-memory counts again from its start.
    """

    def __init__(self, hooks: Hooks, done: int, total: int, steps: int) -> None:
        self.hooks, self.done, self.total, self.steps = hooks, done, total, steps  # steps: (source, attack) pairs
        self.finished, self.step = 0, 0  # samples in finished pieces of this batch; steps done in the piece now

    def begin(self, attack: str, source: str) -> None:
        """Say which attack on which source runs now."""
        if self.hooks.status is not None:
            self.hooks.status(self.hooks.what, f"{attack} on {source}")

    def finished_attack(self, piece: int) -> None:
        """One (source, attack) step of a piece of ``piece`` samples is done."""
        self.step += 1
        if self.hooks.progress is not None:
            share = min(self.step, self.steps) / self.steps
            self.hooks.progress(self.hooks.what, self.done + self.finished + piece * share, self.total)

    def start_piece(self) -> None:
        """A piece starts (again, after out of memory split it): its steps count from 0."""
        self.step = 0

    def finished_piece(self, piece: int) -> None:
        """A piece of the batch is done: the next one counts from its end."""
        self.finished += piece
