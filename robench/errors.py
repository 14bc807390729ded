"""robench's own exceptions: messages written for the user, one line each."""

from __future__ import annotations


class RobenchError(Exception):
    """Bad usage or input: the CLI prints the message and exits with code 2.

    The message says what is wrong, where, and how to fix it.
    """


class CheckFailed(Exception):
    """A gate or leak check ran correctly and failed: the CLI prints the message and exits with code 1.

    Not a RobenchError: the input was fine; the model (or the change) is what failed.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (SLURM and Kubernetes send it before a kill): unwinds like Ctrl-C, exits 143.

    A KeyboardInterrupt, so every path that keeps a run's state on Ctrl-C keeps it on SIGTERM too.
    """


class Interrupted(Exception):
    """Ctrl-C (exit 130) or SIGTERM (exit 143, 128 + 15) stopped a run: the CLI prints the message (where to resume).

    ``code`` is the exit code.
    """

    def __init__(self, message: str, code: int = 130) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def of(cls, stop: BaseException | None, detail: str = "") -> Interrupted:
        """The interruption that ``stop`` (a KeyboardInterrupt or Terminated) means; ``detail`` says what was kept.

        None (a click Abort with no cause) reads as a KeyboardInterrupt.
        """
        if isinstance(stop, Terminated):
            return cls(f"terminated (SIGTERM){detail}", 143)
        return cls(f"interrupted{detail}", 130)


class FieldError(RobenchError):
    """A bad value of a configuration field: the library names the field, the CLI names its option.

    ``template`` writes ``{name}`` wherever the field's name goes, e.g. "{name} must be >= 1";
    the library fills in the field (``limit``), the CLI its option (``--limit``).
    """

    def __init__(self, field: str, template: str) -> None:
        self.field, self.template = field, template
        super().__init__(self.named(field))

    def named(self, name: str) -> str:
        """The message with ``name`` for the field."""
        return self.template.replace("{name}", name)
