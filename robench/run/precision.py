"""The guard on lower precision: the first batch in float32 and as the run asks, outcome by outcome.

bfloat16 keeps 8 bits of mantissa: a logit margin below about 1% can flip, and a gradient's
sign with it. A robust accuracy that a precision setting raised would read as robustness, so
the run stops unless the user has seen the count and confirmed it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from robench import engine
from robench.engine.batch import Views
from robench.engine.runner import views
from robench.errors import FieldError, FieldNote
from robench.run.runspec import Opened, RunSpec


def check_precision(opened: Opened, run: RunSpec, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """What results record of the run's precision; with ``amp``, its first batch compared with float32.

    Raises FieldError (amp) when an outcome differs and ``amp_accept_changes`` is off. Every
    torchrun rank checks the same first batch, so all stop or all go on.
    """
    record = dict(opened.precision)
    if run.amp is None:
        return record
    first = next(views(opened.source, engine.Plan.white_box(opened.participants()).configs(),
                              run.batch_size), None)
    if first is None:
        return record
    exact, fast = (_outcomes(opened, run, first, exact) for exact in (True, False))
    changed = int((exact != fast).any(axis=0).sum())
    samples = exact.shape[1]
    record["amp_check"] = {"samples": samples, "outcomes": int(exact.size), "changed": int((exact != fast).sum()),
                           "samples_changed": changed, "accepted": bool(changed and run.amp_accept_changes)}
    said = (f"{{amp}} {run.amp} changed the outcome of {changed} of the first {samples} samples "
            f"({record['amp_check']['changed']} of {exact.size} top-1/top-5 outcomes) against float32")
    if changed and not run.amp_accept_changes:
        raise FieldError("amp", said.replace("{amp}", "{name}") + "; run without {name}, or pass "
                                "{amp_accept_changes} to record them and go on", "amp_accept_changes")
    if changed and warn is not None:
        warn(FieldNote(said + "; going on as {amp_accept_changes} asks (recorded in the results)",
                       "amp", "amp_accept_changes"))
    return record


def _outcomes(opened: Opened, run: RunSpec, first: Views, exact: bool) -> np.ndarray:
    """[outcomes, samples] of the first batch: every pair's top-1 and top-5 correctness at every setting."""
    plan = engine.Plan.white_box(opened.participants(exact))
    out = engine.Matrix.empty(opened.source.ids, engine.settings_of(run.suite), plan.pairs())
    engine.run_batches(plan, [first], run.suite, out, run.seed)
    rows = next(iter(first.values())).rows.numpy()
    return np.concatenate([np.concatenate([engine.correct(o.pred[:, rows], o.labels[rows]), o.top5[:, rows]])
                           for o in out.pairs.values()])
