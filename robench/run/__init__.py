"""The evaluating capabilities over the engine: white-box sweeps, transfer matrices, label-leak checks.

Each is a frozen config composed of the shared ``RunSpec``, a ``run_*`` function and a result type.
"""

from robench.run.evaluate import EvalConfig, EvalResult, run_eval
from robench.run.leak import LeakConfig, LeakResult, run_leak_check
from robench.run.runspec import RunSpec
from robench.run.transfer import TransferConfig, TransferResult, run_transfer

__all__ = ["EvalConfig", "EvalResult", "LeakConfig", "LeakResult", "RunSpec", "TransferConfig", "TransferResult",
           "run_eval", "run_leak_check", "run_transfer"]
