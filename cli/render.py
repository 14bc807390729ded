"""Rich consoles and progress bars shared by the commands."""

from __future__ import annotations

import math
import sys
import time
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


def rate_columns(unit: str) -> list[Any]:
    """Columns for throughput (``unit``/s) and time left, measured from the task's start.

    Not rich's ``task.speed``: it leaves out the first update and forgets updates older than
    30 s, so a bar added at its first batch, or batches slower than 30 s, never showed a rate.
    A task is added when its work starts (field ``base``: what was already done, e.g. resumed),
    so the rate is the work done since over the time since, from the first finished batch on.
    """
    from rich.progress import ProgressColumn
    from rich.text import Text

    def speed(task: Any) -> float | None:  # a finished task's clock stops at its finish (rich's keeps running)
        done = task.completed - task.fields.get("base", 0)
        elapsed = task.finished_time if task.finished else task.elapsed
        return done / elapsed if done > 0 and elapsed else None

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            s = speed(task)
            return Text(f"- {unit}/s" if s is None else f"{s:,.{1 if s < 10 else 0}f} {unit}/s")

    class Eta(ProgressColumn):
        def render(self, task: Any) -> Text:
            s = speed(task)
            if s is None or task.total is None:
                return Text("eta -:--:--")
            left = int(max(0.0, task.total - task.completed) / s + 0.5)
            return Text(f"eta {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")

    return [Rate(), Eta()]


LOG_EVERY_S = 30.0  # without a terminal (CI logs), a plain progress line at most this often


def log_lines(stream: Any, every: float = LOG_EVERY_S) -> Callable[[str, int, int], None]:
    """A callback (label, done, total) that prints plain lines: after the first finished batch, then at most every
    ``every`` seconds, and at the end; each with images/s and the time left.

    A redirected stderr (a CI log) would otherwise show nothing until the end: rich draws a bar
    only on a terminal.
    """
    state: dict[str, list[float]] = {}  # label -> [start, done at start, time of the last line]

    def update(label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if label not in state:
            state[label] = [now, float(done), -math.inf]
            return
        start, base, last = state[label]
        if done < total and now - last < every:
            return
        rate = (done - base) / max(now - start, 1e-9)
        left = int((total - done) / rate + 0.5) if rate > 0 else 0
        print(f"{label}: {done}/{total} images, {rate:,.1f} images/s, eta {left // 3600}:{left // 60 % 60:02d}:"
              f"{left % 60:02d}, elapsed {int(now - start)} s", file=stream, flush=True)
        state[label][2] = now

    return update


@contextmanager
def progress_bar(enabled: bool = True, stream: Any = None,
                 terminal: bool | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """A callback (label, done, total) that drives one rich bar per label (the command), with images/s and ETA.

    A label's first call marks its start (robench.engine reports before its first batch); the bar
    shows from the first finished batch on, so an error before it leaves stderr to its one line.
    Without a terminal it prints plain lines instead (``log_lines``). ``stream`` and ``terminal``:
    where to draw (default stderr) and whether it is a terminal (default: ask it), for tests.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        yield lambda label, done, total: None
        return
    if terminal is None:
        terminal = stream is not None or console(err=True).is_terminal  # a test's stream draws as a terminal
    if not terminal:
        yield log_lines(sys.stderr if stream is None else stream)
        return
    out = console(err=True) if stream is None else _console_on(stream)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *rate_columns("images"),
                   TextColumn("elapsed"), TimeElapsedColumn(), console=out)
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total, completed=done, base=done)
            return
        bar.update(tasks[label], completed=done)
        if not bar.live.is_started:
            bar.start()

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


def _console_on(stream: Any) -> Any:
    """A terminal-like console on ``stream`` (tests capture what a user would see)."""
    from rich.console import Console

    return Console(file=stream, force_terminal=True, width=160)


@contextmanager
def epoch_bar(epochs: int, enabled: bool = True, stream: Any = None) -> Iterator[Callable[[Any], None]]:
    """A callback taking robench.train.EpochStats: one rich bar per epoch with loss, accuracy, examples/s and ETA.

    An epoch's first report (seen 0, sent before its first step) marks its start, as in ``progress_bar``.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        yield lambda stats: None
        return
    bar = Progress(TextColumn(f"epoch {{task.fields[epoch]}}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}"),
                   *rate_columns("examples"), TextColumn("elapsed"), TimeElapsedColumn(),
                   console=console(err=True) if stream is None else _console_on(stream))
    tasks: dict[int, Any] = {}

    def update(stats: Any) -> None:
        if stats.epoch not in tasks:
            tasks[stats.epoch] = bar.add_task("", total=stats.total, completed=stats.seen, base=stats.seen,
                                              epoch=stats.epoch, loss=stats.loss, acc=stats.accuracy)
        else:
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
