"""Deprecated: ``robench.evaluate`` moved to ``robench.run.evaluate``; this alias goes in the next release."""

import warnings

from robench.run.evaluate import *  # noqa: F403

warnings.warn(
    "robench.evaluate is deprecated: import from robench.run.evaluate (or robench) instead",
    DeprecationWarning,
    stacklevel=2,
)
