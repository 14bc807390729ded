"""Deprecated: ``robench.runspec`` moved to ``robench.run.runspec``; this alias goes in the next release."""

import warnings

from robench.run.runspec import *  # noqa: F403

warnings.warn(
    "robench.runspec is deprecated: import from robench.run.runspec (or robench) instead",
    DeprecationWarning,
    stacklevel=2,
)
