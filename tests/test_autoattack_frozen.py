"""The `autoattack` suite's outcomes, frozen: speed work on its attacks must not change one sample.

tests/data/autoattack_frozen.json holds, for zoo:resnet-stepll on the first 40 digits test images at
eps 8 and 16, every row's per-sample prediction (clean, then APGD-CE, APGD-T, FAB-T and Square),
written by the code before the issue 28 speed work (regenerate, only on purpose, with
`python tests/test_autoattack_frozen.py`). Predictions are discrete outcomes of a seeded,
deterministic run; a float tie that another CPU breaks the other way could flip one sample, so
each row may differ in at most TOLERANCE samples (none on the machine that wrote the file).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

FROZEN = Path(__file__).parent / "data" / "autoattack_frozen.json"
MODEL, LIMIT, EPS = "zoo:resnet-stepll", 40, (8.0, 16.0)
TOLERANCE = 1  # samples per row; see the module docstring
# The suite's attacks and options with fewer steps, targets and queries, and without cascade: every attack
# then meets every sample (under cascade the later stages fool none of them on this model), in seconds.
CUT = {"apgd": {"steps": 20}, "apgd_t": {"steps": 20, "targets": 4}, "fab_t": {"steps": 20, "targets": 4},
       "square": {"queries": 300}}


def autoattack_rows() -> dict[str, list[int]]:
    """Per (attack id, eps) row of the cut `autoattack` suite, each sample's predicted class, on one thread."""
    from robench.attacks.suite import load_suite
    from robench.data import InputConfig, load_digits_source
    from robench.engine import Hooks, Matrix, Participant, Plan, run_batches, settings_of
    from robench.models import load_model, parse_spec

    loaded = load_model(parse_spec(MODEL), 10)
    source = load_digits_source("test", limit=LIMIT, seed=0)
    batch = next(source.batches(loaded.input, LIMIT))
    suite = load_suite("autoattack")
    suite = dataclasses.replace(suite, cascade=False, attacks=tuple(
        dataclasses.replace(a, eps=EPS, config=dataclasses.replace(a.config, **CUT[a.name])) for a in suite.attacks))
    plan = Plan.white_box([Participant("m", loaded.module.eval(), InputConfig())])
    out = Matrix.empty(source.ids, settings_of(suite), plan.pairs())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_batches(plan, iter([{InputConfig(): batch}]), suite, out, 0, Hooks())
    finally:
        torch.set_num_threads(threads)
    pred = out.pairs[("m", "m")].pred
    rows = {"labels": batch.labels.tolist()}
    rows.update({f"{a}@{e:g}": pred[i].tolist() for i, (a, e) in enumerate(settings_of(suite))})
    return rows


@pytest.mark.slow
def test_autoattack_rows_equal_the_frozen_ones() -> None:
    frozen = json.loads(FROZEN.read_text())
    rows = autoattack_rows()
    assert rows.keys() == frozen["rows"].keys()
    differ = {k: int((np.array(v) != np.array(frozen["rows"][k])).sum()) for k, v in rows.items()}
    assert differ["labels"] == 0
    assert max(differ.values()) <= TOLERANCE, differ


def test_the_frozen_rows_show_attacks_at_work() -> None:
    """The frozen file is worth comparing to: every attack fools some samples at eps 16, and some survive."""
    rows = json.loads(FROZEN.read_text())["rows"]
    y = np.array(rows["labels"])
    right = {k: int((np.array(v) == y).sum()) for k, v in rows.items() if k != "labels"}
    assert all(right["clean@0"] > right[f"{a}@16"] > 0 for a in ("apgd-ce", "apgd_t", "fab_t", "square"))
    assert all(right[f"{a}@16"] < right[f"{a}@8"] < right["clean@0"] for a in ("apgd-ce", "apgd_t", "fab_t"))


if __name__ == "__main__":
    FROZEN.parent.mkdir(exist_ok=True)
    FROZEN.write_text(json.dumps({"model": MODEL, "limit": LIMIT, "eps": EPS, "rows": autoattack_rows()}) + "\n")
    sys.exit(0)
