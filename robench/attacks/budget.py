"""Each attack's planned passes per sample: its budget, known before it runs from its config, eps and classes.

A stage's progress is the passes it has spent over this budget, so a bar and its ETA move
with the attack's own work. A budget is what the attack spends on a sample that no step
fools (AutoAttack's worst case); early stopping and fooled samples spend less, never more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from robench.attacks.iterative import schedule_steps
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
    """bim, iter_ll: the shared trunk's steps, plus each smaller eps's steps after it must leave the trunk.

    Every eps walks the trunk at least until a step of ``step_size`` could cross its own ball
    (ceil(eps / step_size) - 1 steps), so this bounds what ``_shared_sweep`` spends from above.
    """
    runs = [(e, schedule_steps(e, config.step_size, config.steps, config.norm)) for e in eps if e != 0]
    if not runs:
        return 0
    widest = max(runs)
    alone = sum(max(0, n - math.ceil(e / config.step_size - 1e-3)) for e, n in runs if (e, n) != widest)
    return GRADIENT * (max(n for _, n in runs) + alone)


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


def momentum(config: Any, eps: Sequence[float], classes: int) -> int:
    """mi/ni/di/ti/vmi_fgsm: per eps and step a gradient, and VMI's ``samples`` more for its neighbours.

    With early stopping and DI or NI on, checking the iterate adds one forward per step (the gradient's
    forward is elsewhere), at most ``steps`` passes above this on a sample never fooled.
    """
    return _nonzero(eps) * config.steps * GRADIENT * (1 + config.samples)


def square(config: Any, eps: Sequence[float], classes: int) -> int:
    """square: ``queries`` forwards per eps."""
    return _nonzero(eps) * config.queries
