"""robench: adversarial robustness benchmarks for timm image classifiers.

Importing the package is cheap on purpose (no torch, no timm) so that the CLI's
``--help`` stays fast; heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
