"""robench's own exceptions: messages written for the user, one line each."""

from __future__ import annotations

from collections.abc import Callable


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
    the library fills in the field (``limit``), the CLI its option (``--limit``). A message that
    names further fields lists them in ``others`` and writes each as ``{field}`` ("give {name} or
    {baseline}"); ``robench.core.fields`` checks fields and raises this.
    """

    def __init__(self, field: str, template: str, *others: str) -> None:
        self.field, self.template, self.others = field, template, others
        super().__init__(self.named(field))

    def named(self, name: str, other: Callable[[str], str] | None = None) -> str:
        """The message with ``name`` for the field and ``other(field)`` for each other field (default: its name)."""
        return _fill(self.template.replace("{name}", name), self.others, other)

    def wrapped(self, before: str = "", after: str = "") -> FieldError:
        """The same error with text around its message (a location, a reason), still naming its fields."""
        return FieldError(self.field, before + self.template + after, *self.others)


class FieldNote(str):
    """A warning that names fields, as FieldError does: the text names each field, ``named`` says it another way.

    ``template`` writes each of ``fields`` as ``{field}`` ("{data} overrides"); the string itself is
    the library's text (``data overrides``), and the CLI prints ``named(option)`` (``--data overrides``).
    """

    template: str
    fields: tuple[str, ...]

    def __new__(cls, template: str, *fields: str) -> FieldNote:
        note = super().__new__(cls, _fill(template, fields, None))
        note.template, note.fields = template, fields
        return note

    def named(self, say: Callable[[str], str]) -> str:
        """The warning with ``say(field)`` for each field."""
        return _fill(self.template, self.fields, say)


def _fill(template: str, fields: tuple[str, ...], say: Callable[[str], str] | None) -> str:
    for field in fields:
        template = template.replace("{" + field + "}", field if say is None else say(field))
    return template
