"""Each attack's planned passes per sample: its budget, known before it runs from its config, eps and classes.

A stage's progress is the passes it has spent over this budget, so a bar and its ETA move
with the attack's own work. A budget is what the attack spends on a sample that no step
fools (AutoAttack's worst case); early stopping and fooled samples spend less, never more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robench.attacks.iterative import paper_steps
from robench.attacks.malt import malt_passes

GRADIENT = 2  # one forward and one backward pass


def _nonzero(eps: Sequence[float]) -> int:
    return sum(1 for e in eps if e != 0)


def _targets(config: Any, classes: int) -> int:
    """The target classes a targeted attack runs: the config's count, at most every wrong class."""
    return min(config.targets, classes - 1)


def single_step(config: Any, eps: Sequence[float], classes: int) -> int:
    """fgsm, step_ll: one gradient serves every eps."""
    return GRADIENT


def schedule(config: Any, eps: Sequence[float], classes: int) -> int:
    """bim, iter_ll: each eps its steps (the paper's schedule when unset), one gradient a step."""
    return sum(GRADIENT * (paper_steps(e) if config.steps is None else config.steps) for e in eps if e != 0)


def pgd(config: Any, eps: Sequence[float], classes: int) -> int:
    """pgd: ``steps`` gradients per eps."""
    return _nonzero(eps) * GRADIENT * config.steps


def apgd(config: Any, eps: Sequence[float], classes: int) -> int:
    """apgd, apgd_t: per eps, target and restart a gradient at the start and per step, the last step a forward only.

    apgd_t with ``target_select: malt`` adds MALT's ranking, once for every eps.
    """
    runs = config.restarts * (_targets(config, classes) if hasattr(config, "targets") else 1)
    ranking = malt_passes(classes) if getattr(config, "target_select", "logits") == "malt" and _nonzero(eps) else 0
    return ranking + _nonzero(eps) * runs * (GRADIENT * config.steps + 1)


def fab(config: Any, eps: Sequence[float], classes: int) -> int:
    """fab_t: per eps, target, restart and step a gradient and a forward to check the new iterate."""
    return _nonzero(eps) * _targets(config, classes) * config.restarts * config.steps * (GRADIENT + 1)


def square(config: Any, eps: Sequence[float], classes: int) -> int:
    """square: ``queries`` forwards per eps."""
    return _nonzero(eps) * config.queries
