"""Results documents built by hand from per-sample outcomes, and the CLI checks the gate tests share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from robench.cli.main import main
from robench.data import ids_sha256
from robench.results import samples
from robench.results.provenance import SCHEMA_VERSION


def flip(bits: np.ndarray, k: int, to: bool = False) -> np.ndarray:
    """A copy with the first k samples that are (not to) set to ``to``."""
    out = bits.copy()
    out[np.flatnonzero(out != to)[:k]] = to
    return out


def make_doc(outcomes: dict[tuple, np.ndarray], with_samples: bool = True, ids: list[str] | None = None,
             **extra) -> dict:
    """A results document as robench eval writes it, from per-sample top-1 correctness per (model, attack, eps)."""
    n = len(next(iter(outcomes.values())))
    ids = ids or [f"s{i}" for i in range(n)]
    rows = [{"model": m, "attack": a, "eps": e, "top1": float(b.mean()), "top5": 1.0,
             "success_rate": None if a == "clean" else 0.5, "n": n} for (m, a, e), b in outcomes.items()]
    doc = {"robench": "test", "schema_version": SCHEMA_VERSION, "command": "eval",
           "dataset": {"name": "t", "n": n, "ids_sha256": ids_sha256(ids), "ids": ids}, "rows": rows}
    if with_samples:
        recs = [samples.record({"model": m, "attack": a, "eps": e}, b) for (m, a, e), b in outcomes.items()]
        doc["samples"] = samples.section(recs)
    return {**doc, **extra}


N = 200
BASE = np.arange(N) % 4 != 0  # 150 of 200 right: top1 0.75
GRID = {(m, a, e): BASE for m in ("effnet-base", "effnet-stepll", "resnet-base")
        for a, e in (("clean", 0.0), ("fgsm", 4.0), ("fgsm", 8.0), ("bim", 8.0))}


def write(path: Path, doc: dict | str) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, code: int, *needles: str) -> str:
    """The exit code, exactly one 'robench: error:' line on stderr, no traceback; returns the line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


PEAK_MB = 500  # what a refusal may add to the process's peak memory; a bomb here inflates to 4 GiB
PEAK = """import resource, sys
import robench.data, robench.run.evaluate, robench.models, sklearn.datasets, timm  # a run's imports, before the count
from robench.cli.main import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    main(sys.argv[1:], prog_name="robench")
    code = 0
except SystemExit as e:
    code = e.code or 0
print("peak", code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def run_peak(*args: str, timeout: float = 120) -> tuple[int, list[str], float]:
    """Run the CLI in a fresh process: its exit code, its non-blank stderr lines, and how much it raised the process's
    peak memory (MB) beyond what importing robench, torch, timm and scikit-learn took (about 950 MB on its own)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env=env)
    _, code, kib = res.stdout.split()[-3:]
    return int(code), [ln for ln in res.stderr.splitlines() if ln.strip()], int(kib) / 1024
