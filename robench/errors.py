"""robench's own exceptions: messages written for the user, one line each."""


class RobenchError(Exception):
    """Bad usage or input: the CLI prints the message and exits with code 2.

    The message says what is wrong, where, and how to fix it.
    """
