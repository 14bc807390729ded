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
    """Progress within a batch, in passes: the stage now, and the share of the batch's planned passes spent.

    A batch under every attack can take minutes, and one attack (AutoAttack's FAB-T) many: progress
    that moved per batch or per attack looked hung that long and gave its first ETA from too little.
    Each (source, attack) step plans its budget (robench.attacks' ``budget``, passes per sample), and
    the attack's every iteration reports the passes spent so far (robench.core.progress), so images done
    and the ETA move with the attack's own work. A finished step counts its whole plan (fooled samples
    and early stopping spend less). A piece retried after out-of-memory counts again from its start.
    """

    def __init__(self, hooks: Hooks, done: int, total: int, steps: int) -> None:
        self.hooks, self.done, self.total, self.steps = hooks, done, total, steps  # steps: (source, attack) pairs
        self.finished, self.piece = 0, 0  # samples in finished pieces of this batch; samples in the piece now
        self.plan: list[int] = []  # planned passes per sample of each step of the piece, in order
        self.step, self.spent, self.called, self.stage = 0, 0, 0, ""  # the step now: passes spent, in ended calls

    def start_piece(self, piece: int) -> None:
        """A piece of ``piece`` samples starts (again, after out of memory split it): its steps count from 0."""
        self.piece, self.plan, self.step = piece, [], 0

    def planned(self, plan: list[int]) -> None:
        """The piece's planned passes per sample, per (source, attack) step in the order they run."""
        self.plan = plan

    def begin(self, attack: str, source: str) -> None:
        """Say which attack on which source runs now."""
        self.stage, self.spent, self.called = f"{attack} on {source}", 0, 0
        if self.hooks.status is not None:
            self.hooks.status(self.hooks.what, self.stage)

    def working(self, passes: int) -> None:
        """The attack call now has spent ``passes`` (forward and backward, summed over its samples)."""
        if self.called + passes != self.spent:
            self.spent = self.called + passes
            self._report(f"{self.stage}: {self.spent:,}/{self._planned(self.step) * self.piece:,} passes")

    def ended_call(self, passes: int) -> None:
        """An attack call of this step ended, having spent ``passes``."""
        self.called += passes
        self.spent = self.called

    def finished_attack(self) -> None:
        """The (source, attack) step now is done."""
        self.step += 1
        self.spent = self.called = 0
        self._report(None)

    def finished_piece(self) -> None:
        """The piece is done: the next one counts from its end."""
        self.finished += self.piece

    def _planned(self, step: int) -> int:
        return self.plan[step] if step < len(self.plan) else 0

    def _share(self) -> float:
        """The share of the piece's planned passes spent (of its steps, with no plan)."""
        whole = sum(self.plan)
        if not whole:
            return min(self.step, self.steps) / self.steps
        now = min(self.spent / max(self.piece, 1), self._planned(self.step))
        return (sum(self.plan[:self.step]) + now) / whole

    def _report(self, stage: str | None) -> None:
        if self.hooks.progress is not None:
            self.hooks.progress(self.hooks.what, self.done + self.finished + self.piece * self._share(), self.total)
        if stage is not None and self.hooks.status is not None:
            self.hooks.status(self.hooks.what, stage)
