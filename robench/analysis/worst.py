"""The per-sample worst case over a suite, and each sample's smallest breaking eps.

Robust accuracy as researchers report it (AutoAttack, RobustBench; Croce & Hein, ICML 2020):
a sample is robust at eps only if the model classifies it correctly clean and under every
attack of the suite at that eps. A single attack's row overestimates it. Each threat model has
its own worst rows ("worst" for L-inf, "worst-l2" for L2): an L-inf and an L2 eps are other units.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from robench.attacks.suite import CLEAN, NORMS, WORST_L2, WORSTS
from robench.engine import Outcomes, correct

Norms = Mapping[str, str]  # attack id -> its norm (Suite.norms()); an id it lacks is L-inf


def norm_of(attack: str, norms: Norms | None = None) -> str | None:
    """The threat model of a row's attack id: l2 or linf; None for clean, which is no attack."""
    if attack == CLEAN:
        return None
    return (norms or {}).get(attack, "l2" if attack == WORST_L2 else "linf")


def attack_eps(out: Outcomes, norms: Norms | None = None, norm: str | None = None) -> list[float]:
    """The distinct eps of the attack settings of one norm (default: ``main_norm``), ascending."""
    return settings_eps(out.settings, norms, norm)


def main_norm(settings: list[tuple[str, float]], norms: Norms | None = None) -> str:
    """The norm the single-number summaries (min_eps, the robustness curve) follow: linf if any attack is, else l2."""
    found = {norm_of(a, norms) for a, _ in settings if a not in (CLEAN, *WORSTS.values())}
    return "linf" if "linf" in found or not found else "l2"


def settings_eps(settings: list[tuple[str, float]], norms: Norms | None = None,
                 norm: str | None = None) -> list[float]:
    """The distinct eps of the attack settings of one norm among (attack id, eps) settings, ascending.

    ``norm`` None: ``main_norm``. They are the eps of that norm's worst rows.
    """
    norm = norm or main_norm(settings, norms)
    return sorted({float(e) for a, e in settings
                   if a not in (CLEAN, *WORSTS.values()) and norm_of(a, norms) == norm})


def worst_settings(settings: list[tuple[str, float]], norms: Norms | None = None) -> list[tuple[str, float]]:
    """The worst-case settings a run adds: ("worst", eps) per L-inf eps, then ("worst-l2", eps) per L2 eps."""
    return [(WORSTS[n], e) for n in NORMS for e in settings_eps(settings, norms, n)]


def _rows_at(out: Outcomes, eps: float, norms: Norms | None = None, norm: str = "linf") -> list[int]:
    """Clean and every attack setting of this norm at this eps, in suite order."""
    return [0] + [s for s, (a, e) in enumerate(out.settings)
                  if a not in (CLEAN, *WORSTS.values()) and float(e) == eps and norm_of(a, norms) == norm]


def with_worst(out: Outcomes, norms: Norms | None = None) -> Outcomes:
    """These outcomes plus a worst-case setting per threat model and eps: the per-sample AND over clean and the
    attacks of that norm at that eps ("worst" for L-inf, "worst-l2" for L2; ``norms``: attack id -> norm).

    The worst setting's prediction is the first wrong one (clean, then the attacks in suite
    order), else the label; its top-5 hit is the AND of the same settings' hits, and its
    L-inf and L2 sizes the largest. An eps only some attacks use takes the worst over those
    attacks. Attacks of different norms never meet in one row: their eps are other units.
    """
    n, added = len(out.ids), worst_settings(out.settings, norms)
    pred, top5, linf, l2 = (np.empty((len(added), n), dtype=a.dtype) for a in (out.pred, out.top5, out.linf, out.l2))
    for k, (w, e) in enumerate(added):
        rows = _rows_at(out, e, norms, "l2" if w == WORST_L2 else "linf")
        wrong = ~correct(out.pred[rows], out.labels)
        first = out.pred[rows][wrong.argmax(0), np.arange(n)]
        pred[k] = np.where(wrong.any(0), first, out.labels)
        top5[k], linf[k], l2[k] = out.top5[rows].all(0), out.linf[rows].max(0), out.l2[rows].max(0)
    return Outcomes(list(out.ids), out.labels, [*out.settings, *added],
                    np.vstack([out.pred, pred]), np.vstack([out.top5, top5]), out.least_likely,
                    np.vstack([out.linf, linf]), out.goal, np.vstack([out.l2, l2]))


def min_eps(out: Outcomes, norms: Norms | None = None) -> np.ndarray:
    """[N] each sample's smallest eps (of ``main_norm``'s attacks) at which any attack fooled it.

    0 for a sample the model gets wrong clean; inf for one no attack fooled at any eps of the run.
    """
    norm = main_norm(out.settings, norms)
    broken = np.full(len(out.ids), np.inf)
    broken[~correct(out.pred[0], out.labels)] = 0.0
    for e in reversed(attack_eps(out, norms, norm)):
        rows = _rows_at(out, e, norms, norm)[1:]
        fooled = (~correct(out.pred[rows], out.labels)).any(0) & (broken > 0)
        broken[fooled] = e
    return broken


def robustness_curve(out: Outcomes, norms: Norms | None = None) -> list[dict[str, float]]:
    """Robust accuracy against eps (of ``main_norm``'s attacks): the share of samples no attack fooled at any eps
    up to it.

    eps 0 is clean accuracy. Monotone by construction; with early stopping it equals the
    worst rows.
    """
    broken = min_eps(out, norms)
    return [{"eps": e, "robust_accuracy": float((broken > e).mean())}
            for e in [0.0, *attack_eps(out, norms)]]
