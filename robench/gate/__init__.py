"""CI regression gates: rules (gates.yaml), judging results against a baseline, and the gate's reports."""

from robench.gate.judge import GateReport, gate, run_gate
from robench.gate.rules import Rules

__all__ = ["GateReport", "Rules", "gate", "run_gate"]
