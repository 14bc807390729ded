"""The survivor check: full AutoAttack on a few survivors of a suite that takes shortcuts (issue 28).

One home for eval (its worst rows) and transfer-matrix (its white-box diagonal), and for the
dry run's estimate of what the check costs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from robench import engine
from robench.analysis import health, worst
from robench.attacks.suite import NORMS, WORSTS, Suite, load_suite, suite_budget
from robench.core.fields import Rule
from robench.engine.runner import views
from robench.run.runspec import Opened, RunSpec

SURVIVOR_CHECK = 8  # survivors of each worst row the full AutoAttack re-attacks when the suite takes shortcuts
MAX_SURVIVOR_CHECK = 2**20  # beyond any data size: surely a typo
REFERENCE = {"linf": "autoattack", "l2": "autoattack-l2"}  # each norm's full AutoAttack
SURVIVOR_RULE = Rule(int, "a whole number", low=0, high=MAX_SURVIVOR_CHECK,
                     must=f"be a whole number in [0, {MAX_SURVIVOR_CHECK}] (0: off)")


def applies(suite: Suite, most: int) -> bool:
    """Whether the check runs: a cascade suite (AutoAttack's own shape) with shortcuts, and ``most`` not 0.

    A hand-cut suite run for speed (a short Square, say) does not pay for full AutoAttack by default.
    """
    return bool(most) and suite.cascade and bool(suite.shortcuts())


def survivor_check(suite: Suite, most: int, opened: Opened, models: list[engine.Participant],
                   outcomes: dict[str, engine.Outcomes], run: RunSpec,
                   ) -> tuple[list[health.Flag], dict[str, Any] | None]:
    """Full AutoAttack on the first ``most`` survivors of each worst row of ``models``, when ``applies``.

    A cheaper suite (fewer targets, fewer queries) could miss a sample the full attack fools, and
    then overstate robust accuracy; a few survivors re-attacked catch a suite that was too greedy
    at a bounded cost. ``outcomes`` carry the worst rows (``worst.with_worst``); an L2 worst row is
    checked with ``autoattack-l2``. Returns the flags and the record for the results (None: not run).
    """
    if not applies(suite, most):
        return [], None
    row_of = {sample: r for r, sample in enumerate(opened.source.ids)}
    checked, flags = [], []
    norm_of = {w: n for n, w in WORSTS.items()}
    for p in models:
        o = outcomes[p.label]
        for s, (attack, eps) in enumerate(o.settings):
            if attack not in norm_of:
                continue
            ids = [i for i, ok in zip(o.ids, o.correct()[s], strict=True) if ok][:most]
            fooled = _fooled_by_autoattack(p, opened, [row_of[i] for i in ids], float(eps), run, norm_of[attack])
            checked.append({"model": p.label, "eps": float(eps), "samples": len(ids),
                            "fooled": [i for i, f in zip(ids, fooled, strict=True) if f],
                            **({"suite": REFERENCE["l2"]} if norm_of[attack] == "l2" else {})})
            flags += health.cheaper_suite_missed(p.label, float(eps), len(ids), int(fooled.sum()), attack,
                                                 REFERENCE[norm_of[attack]])
    return flags, {"max_samples": most, "suite": "autoattack", "checked": checked}


def planned_passes(suite: Suite, most: int, classes: int) -> int:
    """Passes per checked sample at most, per model: at each worst row's eps a clean forward and AutoAttack's budget.

    An upper bound, as a budget is (``robench.attacks.budget``); 0 when the check would not run.
    """
    if not applies(suite, most):
        return 0
    settings, norms = engine.settings_of(suite), suite.norms()
    return sum(1 + suite_budget(_autoattack_at(e, n), classes)
               for n in NORMS for e in worst.settings_eps(settings, norms, n))


def _autoattack_at(eps: float, norm: str = "linf") -> Suite:
    """The built-in full AutoAttack of this norm (``autoattack``, ``autoattack-l2``) at this one eps."""
    aa = load_suite(REFERENCE[norm])
    return replace(aa, attacks=tuple(replace(a, eps=(eps,)) for a in aa.attacks))


def _fooled_by_autoattack(p: engine.Participant, opened: Opened, rows: list[int], eps: float,
                          run: RunSpec, norm: str = "linf") -> np.ndarray:
    """Per row, whether the full AutoAttack at ``eps`` (the run's seed) fools the model on it (or it is wrong clean)."""
    if not rows:
        return np.zeros(0, dtype=bool)
    suite, plan = _autoattack_at(eps, norm), engine.Plan.white_box([p])
    out = engine.Matrix.empty(opened.source.ids, engine.settings_of(suite), plan.pairs())
    batches = views(opened.source, plan.configs(), run.batch_size, torch.tensor(rows, dtype=torch.int64))
    engine.run_batches(plan, batches, suite, out, run.seed)
    ok: np.ndarray = out.subset(np.asarray(rows, dtype=np.int64)).white_box()[p.label].correct()
    return np.asarray(~ok.all(axis=0), dtype=bool)
