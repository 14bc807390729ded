"""Deprecated: ``robench.preprocess`` moved to ``robench.models.preprocess``; this alias goes in the next release."""

import warnings

from robench.models.preprocess import *  # noqa: F403

warnings.warn(
    "robench.preprocess is deprecated: import from robench.models.preprocess (or robench) instead",
    DeprecationWarning,
    stacklevel=2,
)
