"""Reading outcomes: the paper's metrics, the per-sample worst case, health flags and the probes behind them."""

from robench.analysis.health import Flag
from robench.analysis.metrics import DEFINITIONS, ROW_COLUMNS, TRANSFER_DEFINITIONS, success_rate, transfer_rates

__all__ = ["DEFINITIONS", "ROW_COLUMNS", "TRANSFER_DEFINITIONS", "Flag", "success_rate", "transfer_rates"]
