"""The results file both ways: schema, provenance, packed per-sample outcomes, reading and writing."""

from robench.results.read import load_results
from robench.results.write import write_per_sample, write_results

__all__ = ["load_results", "write_per_sample", "write_results"]
