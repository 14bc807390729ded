"""robench: adversarial robustness benchmarks for timm image classifiers.

Importing the package is cheap on purpose (no torch, no timm) so that the CLI's ``--help``
stays fast: the library API below is imported on first use (PEP 562 ``__getattr__``).

    import robench
    result = robench.run_eval(robench.EvalConfig(models=("zoo:effnet-base",)))

Training and gates are their own packages (``robench.train.train``, ``robench.gate.gate``): a
package and a function cannot share the name ``robench.train``; nor can the deprecated module
``robench.evaluate`` and ``robench.engine.evaluate``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {  # public name -> the module that defines it
    "RobenchError": "robench.errors", "FieldError": "robench.errors",
    "RunSpec": "robench.run.runspec",
    "EvalConfig": "robench.run.evaluate", "EvalResult": "robench.run.evaluate", "run_eval": "robench.run.evaluate",
    "TransferConfig": "robench.run.transfer", "TransferResult": "robench.run.transfer",
    "run_transfer": "robench.run.transfer",
    "LeakConfig": "robench.run.leak", "LeakResult": "robench.run.leak", "run_leak_check": "robench.run.leak",
    "TrainConfig": "robench.models.recipe", "load_results": "robench.results.read",
    "Suite": "robench.attacks.suite", "load_suite": "robench.attacks.suite", "parse_suite": "robench.attacks.suite",
    "override": "robench.attacks.suite",
    "Preprocess": "robench.models.preprocess", "load_model": "robench.models", "parse_spec": "robench.models",
    "open_source": "robench.data",
}
__all__ = [  # the same names as _API (a literal, so linters and type checkers read it)
    "__version__", "RobenchError", "FieldError", "RunSpec", "EvalConfig", "EvalResult", "run_eval", "TransferConfig",
    "TransferResult", "run_transfer", "LeakConfig", "LeakResult", "run_leak_check", "TrainConfig", "load_results",
    "Suite", "load_suite", "parse_suite", "override", "Preprocess", "load_model", "parse_spec",
    "open_source",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from robench.attacks.suite import Suite, load_suite, override, parse_suite
    from robench.data import open_source
    from robench.errors import FieldError, RobenchError
    from robench.models import load_model, parse_spec
    from robench.models.preprocess import Preprocess
    from robench.models.recipe import TrainConfig
    from robench.results.read import load_results
    from robench.run.evaluate import EvalConfig, EvalResult, run_eval
    from robench.run.leak import LeakConfig, LeakResult, run_leak_check
    from robench.run.runspec import RunSpec
    from robench.run.transfer import TransferConfig, TransferResult, run_transfer


def __getattr__(name: str) -> Any:
    """Import a library name on first use (``robench.run_eval``), so ``import robench`` stays light."""
    if name not in _API:
        raise AttributeError(f"module 'robench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
