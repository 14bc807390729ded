"""The per-sample worst case over a suite, and each sample's smallest breaking eps.

Robust accuracy as researchers report it (AutoAttack, RobustBench; Croce & Hein, ICML 2020):
a sample is robust at eps only if the model classifies it correctly clean and under every
attack of the suite at that eps. A single attack's row overestimates it.
"""

from __future__ import annotations

import numpy as np

from robench.attacks.suite import CLEAN, WORST
from robench.engine import Outcomes, correct


def attack_eps(out: Outcomes) -> list[float]:
    """The distinct eps of the attack settings, ascending (1/255 units)."""
    return settings_eps(out.settings)


def settings_eps(settings: list[tuple[str, float]]) -> list[float]:
    """The distinct eps of the attack settings among (attack id, eps) settings, ascending: the worst rows' eps."""
    return sorted({float(e) for a, e in settings if a not in (CLEAN, WORST)})


def _rows_at(out: Outcomes, eps: float) -> list[int]:
    """Clean and every attack setting at this eps, in suite order."""
    return [0] + [s for s, (a, e) in enumerate(out.settings) if a not in (CLEAN, WORST) and float(e) == eps]


def with_worst(out: Outcomes) -> Outcomes:
    """These outcomes plus a ("worst", eps) setting for every eps: the per-sample AND over clean and the attacks.

    The worst setting's prediction is the first wrong one (clean, then the attacks in suite
    order), else the label; its top-5 hit is the AND of the same settings' hits, and its
    L-inf the largest. An eps only some attacks use takes the worst over those attacks.
    """
    n, eps_list = len(out.ids), attack_eps(out)
    pred, top5, linf = (np.empty((len(eps_list), n), dtype=a.dtype) for a in (out.pred, out.top5, out.linf))
    for k, e in enumerate(eps_list):
        rows = _rows_at(out, e)
        wrong = ~correct(out.pred[rows], out.labels)
        first = out.pred[rows][wrong.argmax(0), np.arange(n)]
        pred[k] = np.where(wrong.any(0), first, out.labels)
        top5[k], linf[k] = out.top5[rows].all(0), out.linf[rows].max(0)
    return Outcomes(list(out.ids), out.labels, [*out.settings, *((WORST, e) for e in eps_list)],
                    np.vstack([out.pred, pred]), np.vstack([out.top5, top5]), out.least_likely,
                    np.vstack([out.linf, linf]), out.goal)


def min_eps(out: Outcomes) -> np.ndarray:
    """[N] each sample's smallest eps (1/255 units) at which any attack fooled it.

    0 for a sample the model gets wrong clean; inf for one no attack fooled at any eps of the run.
    """
    broken = np.full(len(out.ids), np.inf)
    broken[~correct(out.pred[0], out.labels)] = 0.0
    for e in reversed(attack_eps(out)):
        rows = _rows_at(out, e)[1:]
        fooled = (~correct(out.pred[rows], out.labels)).any(0) & (broken > 0)
        broken[fooled] = e
    return broken


def robustness_curve(out: Outcomes) -> list[dict[str, float]]:
    """Robust accuracy against eps: the share of samples no attack fooled at any eps up to it.

    eps 0 is clean accuracy. Monotone by construction; with early stopping it equals the
    worst rows.
    """
    broken = min_eps(out)
    return [{"eps": e, "robust_accuracy": float((broken > e).mean())} for e in [0.0, *attack_eps(out)]]
