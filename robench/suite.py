"""Deprecated: ``robench.suite`` moved to ``robench.attacks.suite``; this alias goes in the next release."""

import warnings

from robench.attacks.suite import *  # noqa: F403

warnings.warn(
    "robench.suite is deprecated: import from robench.attacks.suite (or robench) instead",
    DeprecationWarning,
    stacklevel=2,
)
