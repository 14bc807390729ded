"""The ``robench`` command group and its exit-code contract.

Commands only parse, call the library and render. Heavy imports (torch, timm)
happen inside commands so that ``robench --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click

from robench import __version__
from robench.core.files import WriteFailed
from robench.core.stop import clear_stop, request_stop
from robench.errors import CheckFailed, FieldError, Interrupted, RobenchError, Terminated

from .options import option_of, refuse_empty_paths

# Click >= 8.2 raises this (a UsageError) for a group called without a command; its message is the whole help.
_NO_ARGS: type[click.UsageError] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())

EXIT_CODES = """\b
Exit codes (every command):
  0    ok
  1    a gate or leak check failed
  2    bad usage or input (one line on stderr says what and how to fix it)
  3    runtime error
  130  interrupted (Ctrl-C)
  143  terminated (SIGTERM, e.g. from SLURM or Kubernetes)"""


OPTIONS = {  # field -> option, where the option is not the field's name in dashes
    "clean_refs": "--clean-ref", "health_probes": "--no-health", "models": "--model", "suite": "--attacks",
}


def option(field: str, command: click.Command | None = None) -> str:
    """The command-line option that sets a config field (``batch_size`` -> ``--batch-size``).

    The command's own option for the field comes first: eval's --baseline sets ``baseline_path``.
    A name the CLI gave a library call itself (an argument's metavar such as ``BASELINE``, or ``-o``)
    is already the user's word and stays as it is.
    """
    if not field.isidentifier() or field.isupper():
        return field
    return option_of(command, field) or OPTIONS.get(field, "--" + field.replace("_", "-"))


def _fail(message: str, code: int) -> None:
    click.echo(f"robench: error: {message}", err=True)
    sys.exit(code)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: unwind as Ctrl-C does (state kept, one line); a second SIGTERM ends the process at once.

    The stop request outlives the exception, which can be lost on its way (a finalizer, a library's
    ``except BaseException``): the running attack then stops at its next iteration.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    request_stop(Terminated())
    raise Terminated


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: Python's KeyboardInterrupt, and a stop request that the running attack honours at its next iteration."""
    request_stop(KeyboardInterrupt())
    raise KeyboardInterrupt


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM raises robench.errors.Terminated; the previous handlers are restored after.

    Both SIGTERM and Ctrl-C also request a stop (robench.core.stop), cleared when the command ends.
    Ctrl-C's handler is replaced only where it is Python's own (a shell that ignores SIGINT keeps it
    ignored). Only from the main thread, the one place Python lets a handler be set (a library
    caller's thread is left alone).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear_stop()
    previous = signal.signal(signal.SIGTERM, _terminate)
    before_int = signal.getsignal(signal.SIGINT)
    if before_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if before_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, before_int)
        clear_stop()


class RobenchGroup(click.Group):
    """A Click group that maps every failure onto robench's exit codes, one line each."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a FieldError leaves naming the command's own option for its field."""
        try:
            return super().invoke(ctx)
        except FieldError as e:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            raise RobenchError(e.named(option(e.field, command), lambda other: option(other, command))) from e

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            with _sigterm_unwinds():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as e:  # help, not an error: no "robench: error:" in front of it
            click.echo(e.ctx.get_help() if e.ctx else e.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            _fail(f"{e.format_message()}{hint}", 2)
        except RobenchError as e:  # a FieldError names a config field; the user typed its option
            _fail(e.named(option(e.field), option) if isinstance(e, FieldError) else str(e), 2)
        except CheckFailed as e:
            _fail(str(e), 1)
        except (Interrupted, WriteFailed) as e:  # a stop (130, 143) or a full disk (3): one line, no "runtime error"
            _fail(str(e), e.code)
        except (click.Abort, KeyboardInterrupt) as e:  # click turns Ctrl-C and SIGTERM into Abort from them
            stopped = Interrupted.of(e.__cause__ if isinstance(e, click.Abort) else e)
            _fail(str(stopped), stopped.code)
        except click.ClickException as e:
            _fail(e.format_message(), 2)
        except Exception as e:  # noqa: BLE001 - the contract: one line and exit 3, never a traceback
            if os.environ.get("ROBENCH_DEBUG"):
                raise
            first = next(iter(str(e).strip().splitlines()), "")[:300]  # torch's C++ errors run on with stack frames
            _fail(f"runtime error: {type(e).__name__}: {first} (set ROBENCH_DEBUG=1 for the traceback)", 3)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=RobenchGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robench")
def main() -> None:
    """Measure how robust timm image classifiers are to adversarial examples.

    Attacks and findings follow Kurakin, Goodfellow & Bengio, "Adversarial
    Machine Learning at Scale" (ICLR 2017). Every command runs offline on
    built-in data and models.
    """


def _naming_outputs(command: click.Command) -> None:
    """An output that fails to write (a full disk) is named by the option that gave it, as bad input is."""
    callback = command.callback
    if callback is None:
        return

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except WriteFailed as e:
            given = [p for p in command.params if e.path is not None and _same_path(kwargs.get(p.name or ""), e.path)]
            if not given:
                raise
            name = max(given[0].opts, key=len) if isinstance(given[0], click.Option) else given[0].human_readable_name
            raise WriteFailed(f"{name}: {e}", e.path) from None

    command.callback = run


def _same_path(value: object, path: Path) -> bool:
    """Whether an option's value (a path, or a tuple of them) names ``path``."""
    values = value if isinstance(value, tuple) else (value,)
    return any(isinstance(v, (str, Path)) and str(v) and os.path.abspath(v) == os.path.abspath(path) for v in values)


def _with_exit_codes(command: click.Command) -> click.Command:
    """Every command's --help ends with the exit codes: scripts look for them there."""
    command.epilog = command.epilog or EXIT_CODES
    refuse_empty_paths(command)
    _naming_outputs(command)
    for sub in getattr(command, "commands", {}).values():
        _with_exit_codes(sub)
    return command


def _register() -> None:
    from .baseline_cmd import baseline_group
    from .eval_cmd import eval_command
    from .gate_cmd import gate_command
    from .leak_cmd import leak_command
    from .report_cmd import report_command
    from .schema_cmd import schema_command
    from .suites_cmd import suites_command
    from .train_cmd import train_command
    from .transfer_cmd import transfer_command
    from .zoo_cmd import zoo_command

    main.add_command(_with_exit_codes(baseline_group))
    main.add_command(_with_exit_codes(eval_command))
    main.add_command(_with_exit_codes(gate_command))
    main.add_command(_with_exit_codes(leak_command))
    main.add_command(_with_exit_codes(report_command))
    main.add_command(_with_exit_codes(schema_command))
    main.add_command(_with_exit_codes(suites_command))
    main.add_command(_with_exit_codes(train_command))
    main.add_command(_with_exit_codes(transfer_command))
    main.add_command(_with_exit_codes(zoo_command))


_register()
