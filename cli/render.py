"""Rich consoles and progress bars shared by the commands."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def console(err: bool = False) -> Any:
    """A rich console on stdout (results) or stderr (progress, warnings); wide when piped."""
    from rich.console import Console

    stream = sys.stderr if err else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 160)


def health_warnings(flags: list[Any]) -> None:
    """One warning line on stderr per health flag (robench.health.Flag), ending with its README link."""
    from rich.markup import escape

    err = console(err=True)
    for f in flags:
        err.print(f"[yellow]health warning:[/] {escape(f.line())}", soft_wrap=True)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A callback (label, done, total) that drives one rich bar per label (the command), with images/s."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} images/s" if task.speed else "- images/s")

    if not enabled:
        yield lambda label, done, total: None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console(err=True))
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()  # on the first finished batch: an error before it leaves stderr to its one line
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


@contextmanager
def epoch_bar(epochs: int, enabled: bool = True) -> Iterator[Callable[[Any], None]]:
    """A callback taking robench.train.EpochStats: one rich bar per epoch with loss and accuracy."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        yield lambda stats: None
        return
    bar = Progress(TextColumn(f"epoch {{task.fields[epoch]}}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}"), TimeElapsedColumn(),
                   console=console(err=True))
    tasks: dict[int, Any] = {}

    def update(stats: Any) -> None:
        if stats.epoch not in tasks:
            tasks[stats.epoch] = bar.add_task("", total=stats.total, epoch=stats.epoch, loss=0.0, acc=0.0)
        bar.update(tasks[stats.epoch], completed=stats.seen, loss=stats.loss, acc=stats.accuracy)

    with bar:
        yield update


def warn(message: str) -> None:
    """A warning on stderr, one line however long (paths and messages are printed as they are)."""
    from rich.markup import escape

    console(err=True).print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def distributed_run(device: str, quiet: bool, resume: Any = None) -> Iterator[tuple[Any, Callable]]:
    """The torchrun process group (or one process) and a progress bar on rank 0 only.

    Ctrl-C leaves through robench.errors.Interrupted, naming the --resume folder when there is one.
    """
    from robench.distributed import session
    from robench.errors import Interrupted

    with session(device) as dist, progress_bar(dist.is_main and not quiet) as progress:
        try:
            yield dist, progress
        except KeyboardInterrupt:
            where = f"; finished batches are kept in {resume}: run the same command to go on" if resume else ""
            raise Interrupted(f"interrupted{where}") from None
