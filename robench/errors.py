"""robench's own exceptions: messages written for the user, one line each."""


class RobenchError(Exception):
    """Bad usage or input: the CLI prints the message and exits with code 2.

    The message says what is wrong, where, and how to fix it.
    """


class CheckFailed(Exception):
    """A gate or leak check ran correctly and failed: the CLI prints the message and exits with code 1.

    Not a RobenchError: the input was fine; the model (or the change) is what failed.
    """


class Interrupted(Exception):
    """The user pressed Ctrl-C: the CLI prints the message (where to resume) and exits with code 130."""


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
