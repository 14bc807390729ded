"""robench's own exceptions: messages written for the user, one line each."""


class RobenchError(Exception):
    """Bad usage or input: the CLI prints the message and exits with code 2.

    The message says what is wrong, where, and how to fix it.
    """


class FieldError(RobenchError):
    """Bad input in one named config field: the message names the field, which a front end may rename.

    The library speaks in config fields (``clean_refs``); the CLI knows which option sets a
    field (``--clean-ref``) and says that instead.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class CheckFailed(Exception):
    """A gate or leak check ran correctly and failed: the CLI prints the message and exits with code 1.

    Not a RobenchError: the input was fine; the model (or the change) is what failed.
    """


class Interrupted(Exception):
    """The user pressed Ctrl-C: the CLI prints the message (where to resume) and exits with code 130."""
