"""Rich consoles and progress bars shared by the commands."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # rich is imported in the functions that draw (a fast --help); here for its types only
    from rich.console import Console, RenderableType
    from rich.progress import Progress, ProgressColumn, Task, TaskID

    from robench.analysis.health import Flag
    from robench.core.distributed import Dist
    from robench.train.loop import EpochStats


def console(err: bool = False) -> Console:
    """A rich console on stdout (results) or stderr (progress, warnings); wide when piped."""
    from rich.console import Console

    stream = sys.stderr if err else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 160)


def health_warnings(flags: list[Flag]) -> None:
    """One warning line on stderr per health flag (robench.analysis.health.Flag), ending with its docs link."""
    from rich.markup import escape

    err = console(err=True)
    for f in flags:
        err.print(f"[yellow]health warning:[/] {escape(f.line())}", soft_wrap=True)


def rate_columns(unit: str) -> list[ProgressColumn]:
    """Columns for throughput (``unit``/s) and time left, measured from the task's start.

    Not rich's ``task.speed``: it leaves out the first update and forgets updates older than
    30 s, so a bar added at its first batch, or batches slower than 30 s, never showed a rate.
    A task is added when its work starts (field ``base``: what was already done, e.g. resumed),
    so the rate is the work done since over the time since, from the first finished batch on.
    """
    from rich.progress import ProgressColumn
    from rich.text import Text

    def speed(task: Task) -> float | None:  # a finished task's clock stops at its finish (rich's keeps running)
        done = task.completed - task.fields.get("base", 0)
        elapsed = task.finished_time if task.finished else task.elapsed
        return done / elapsed if done > 0 and elapsed else None

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            s = speed(task)
            return Text(f"- {unit}/s" if s is None else f"{s:,.{1 if s < 10 else 0}f} {unit}/s")

    class Eta(ProgressColumn):
        def render(self, task: Task) -> Text:
            s = speed(task)
            if s is None or task.total is None:
                return Text("eta -:--:--")
            left = int(max(0.0, task.total - task.completed) / s + 0.5)
            return Text(f"eta {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")

    return [Rate(), Eta()]


LOG_EVERY_S = 30.0  # without a terminal (CI logs), a plain progress line at most this often


@dataclass(frozen=True)
class Reporter:
    """The two callbacks a run reports to: images done (label, done, total) and the stage now (label, text)."""

    progress: Callable[[str, float, int], None]
    status: Callable[[str, str], None]


def _silent(*_: Any) -> None:
    return None


@dataclass
class _Logged:
    """What LogLines knows of one label's run."""

    last: float  # time of its last line
    stage: str = ""  # the stage now; "" until one is reported
    start: tuple[float, float] | None = None  # (time, images done) at the run's start report
    done: tuple[float, int] = (0.0, 0)  # latest (images done, total)
    ended: bool = False  # its last line is printed


class LogLines:
    """Plain progress lines for a log (stderr not a terminal), where rich draws nothing until the end.

    The first stage a run reports (its health probes, or its first attack) prints at once, so a
    log shows the run has started; then, at each stage report (an attack starting, or one of its
    iterations with the passes it has spent), a line if ``every`` seconds have passed since the
    last, with images/s, the time left and the stage now; and a last line at the end. Progress
    moves with the attack's passes, so a batch of one long attack still gives a line every
    ``every`` seconds (a heartbeat) and a rate from its first minute. ``clock``: seconds, for tests.
    """

    def __init__(self, stream: TextIO, every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.every, self.clock = stream, every, clock
        self.runs: dict[str, _Logged] = {}

    def progress(self, label: str, done: float, total: int) -> None:
        """Images done; the first call marks the start the rate counts from."""
        now = self.clock()
        run = self.runs.setdefault(label, _Logged(last=-math.inf))
        run.done = (done, total)
        if run.start is None:
            run.start = (now, done)
        elif done >= total and not run.ended:
            run.ended = True
            self._line(label, run, run.start, now)
        elif not run.stage and now - run.last >= self.every:
            self._line(label, run, run.start, now)  # a run that names no stages: a line per interval from here

    def status(self, label: str, text: str) -> None:
        """The stage now: printed at once the first time, else in the next line that is due."""
        now = self.clock()
        run = self.runs.setdefault(label, _Logged(last=-math.inf))
        run.stage = text
        if run.last == -math.inf:  # no line yet for this run
            self._print(run, now, f"{label}: {text}")
        elif run.start is not None and now - run.last >= self.every:
            self._line(label, run, run.start, now)

    def _line(self, label: str, run: _Logged, started: tuple[float, float], now: float) -> None:
        (start, base), (done, total) = started, run.done
        rate = (done - base) / max(now - start, 1e-9)
        left = int((total - done) / rate + 0.5) if rate > 0 else 0
        stage = f", now {run.stage}" if run.stage and done < total else ""
        self._print(run, now, f"{label}: {int(done)}/{total} images, {rate:,.1f} images/s, eta {_clock(left)}, "
                              f"elapsed {int(now - start)} s{stage}")

    def _print(self, run: _Logged, now: float, line: str) -> None:
        print(line, file=self.stream, flush=True)
        run.last = now


def _clock(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextmanager
def progress_bar(enabled: bool = True, stream: TextIO | None = None, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> Iterator[Reporter]:
    """One rich bar per label (the command) with images/s, ETA and the stage now; plain lines without a terminal.

    The first report (a stage, or robench.engine's start) shows the bar; the rate counts from
    the engine's start report. Without a terminal it prints ``LogLines`` instead. ``stream``
    and ``terminal``: where to draw (default stderr) and whether it is a terminal (default:
    ask it), and ``clock`` (seconds), for tests; a given stream is drawn at every report, not
    ten times a second, so that a test sees each state.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    if not enabled:
        yield Reporter(_silent, _silent)
        return
    if terminal is None:
        terminal = stream is not None or console(err=True).is_terminal  # a test's stream draws as a terminal
    if not terminal:
        lines = LogLines(sys.stderr if stream is None else stream, clock=clock)
        yield Reporter(lines.progress, lines.status)
        return
    out = console(err=True) if stream is None else _console_on(stream)
    bar = _staged_bar([TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *rate_columns("images"),
                       TextColumn("elapsed"), TimeElapsedColumn()], out, clock, stream is None)
    tasks: dict[str, TaskID] = {}
    stages: dict[str, str] = {}
    counting: set[str] = set()  # labels whose start report came: their clocks run from it

    def progress(label: str, done: float, total: int) -> None:
        if label not in counting:
            counting.add(label)
            # rich's reset and add_task say completed is an int, but Task.completed is a float: fractions draw fine
            if label in tasks:  # shown since a stage (the probes): the rate counts from here
                bar.reset(tasks[label], total=total, completed=done, base=done,  # type: ignore[arg-type]
                          stage=stages[label])
            else:
                tasks[label] = bar.add_task(label, total=total, completed=done,  # type: ignore[arg-type]
                                            base=done, stage="")
            return
        finished: dict[str, Any] = {"stage": ""} if done >= total else {}
        bar.update(tasks[label], completed=done, **finished)
        _show(bar, stream is not None)

    def status(label: str, text: str) -> None:
        stages[label] = text
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=None, base=0, stage=text)
        else:
            bar.update(tasks[label], stage=text)
        _show(bar, stream is not None)

    try:
        yield Reporter(progress, status)
    finally:
        if bar.live.is_started:
            bar.stop()


def _staged_bar(columns: list[ProgressColumn], out: Console, clock: Callable[[], float], auto_refresh: bool,
                ) -> Progress:
    """rich's bars on ``out``, each with its stage on a line of its own below, cut to the terminal's width.

    A stage column beside the bar made the line wrap on an 80-column terminal.
    """
    from rich.progress import Progress
    from rich.text import Text

    class StagedProgress(Progress):
        def get_renderables(self) -> Iterator[RenderableType]:
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                if task.fields.get("stage"):
                    yield Text(f"  {task.fields['stage']}", no_wrap=True, overflow="ellipsis")

    return StagedProgress(*columns, console=out, get_time=clock, auto_refresh=auto_refresh)


def _show(bar: Progress, draw: bool) -> None:
    """Start the bar at its first report; ``draw``: draw it now too."""
    if not bar.live.is_started:
        bar.start()
    if draw:
        bar.refresh()


def _console_on(stream: TextIO) -> Console:
    """A terminal-like console on ``stream`` (tests capture what a user would see)."""
    from rich.console import Console

    return Console(file=stream, force_terminal=True, width=160)


@contextmanager
def epoch_bar(epochs: int, enabled: bool = True, stream: TextIO | None = None,
              ) -> Iterator[Callable[[EpochStats], None]]:
    """A callback taking robench.train.loop.EpochStats: one rich bar per epoch with loss, accuracy, examples/s and ETA.

    An epoch's first report (seen 0, sent before its first step) marks its start, as in ``progress_bar``.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        yield lambda stats: None
        return
    bar = Progress(TextColumn(f"epoch {{task.fields[epoch]}}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]}"),
                   *rate_columns("examples"), TextColumn("elapsed"), TimeElapsedColumn(),
                   console=console(err=True) if stream is None else _console_on(stream))
    tasks: dict[int, TaskID] = {}

    def update(stats: EpochStats) -> None:  # the bar opens at the first report: an error before it prints alone
        if not tasks:
            bar.start()
        if stats.epoch not in tasks:
            tasks[stats.epoch] = bar.add_task("", total=stats.total, completed=stats.seen, base=stats.seen,
                                              epoch=stats.epoch, loss=stats.loss, acc=_accuracies(stats))
        else:
            bar.update(tasks[stats.epoch], completed=stats.seen, loss=stats.loss, acc=_accuracies(stats))

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


def _accuracies(stats: EpochStats) -> str:
    """``92.0%`` on the clean examples, then ``adv 41.3%`` where the minibatches held adversarial ones."""
    clean = "-" if stats.accuracy is None else f"{stats.accuracy:.1%}"
    return clean if stats.adv_accuracy is None else f"{clean} adv {stats.adv_accuracy:.1%}"


def warn(message: str) -> None:
    """A warning on stderr, one line however long (paths and messages are printed as they are)."""
    from rich.markup import escape

    console(err=True).print(f"[yellow]robench: warning:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def distributed_run(device: str, quiet: bool, resume: Path | None = None) -> Iterator[tuple[Dist, Reporter]]:
    """The torchrun process group (or one process) and a progress bar (``Reporter``) on rank 0 only.

    Ctrl-C and SIGTERM (robench.errors.Terminated) leave through robench.errors.Interrupted, naming the
    --resume folder when there is one.
    """
    from robench.core.distributed import session
    from robench.errors import Interrupted

    with session(device) as dist, progress_bar(dist.is_main and not quiet) as reporter:
        try:
            yield dist, reporter
        except KeyboardInterrupt as stop:
            raise Interrupted.of(stop, _kept_in(resume)) from None


def _kept_in(resume: Path | None) -> str:
    """What an interrupted run kept in its --resume folder, as the end of its one line."""
    from robench.engine.resume import kept_samples

    if resume is None:
        return ""
    if not kept_samples(resume):
        return f"; no batch had finished, so nothing was kept in {resume}"
    return f"; finished batches are kept in {resume}: run the same command to go on"
