"""The attack registry: one place that names every attack robench can run.

Every attack has the same signature,
``run(model, x, labels, eps, config, rng, early_stop=False) -> iterator of (eps, x_adv)``,
where ``model`` takes [0, 1] pixels, ``x`` is [N, C, H, W] in [0, 1], ``eps`` is a list in
1/255 units, ``config`` is the attack's own frozen dataclass, and ``rng`` is a
``SampleNoise`` (one stream per sample, so results do not depend on the batch) or a
generator. With ``early_stop`` an iterative attack stops on a sample at its first
misclassified iterate and keeps it. ``square`` is score-based (forwards only) and always
stops on a fooled sample.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from robench.attacks import budget
from robench.attacks.apgd import ApgdConfig, ApgdTConfig, apgd, apgd_t
from robench.attacks.base import Labels, attack_mode
from robench.attacks.fab import FabTConfig, fab_t
from robench.attacks.iterative import BimConfig, IterLLConfig, PgdConfig, bim, iter_ll, pgd
from robench.attacks.momentum import (
    DiFgsmConfig,
    MiFgsmConfig,
    NiFgsmConfig,
    TiFgsmConfig,
    VmiFgsmConfig,
    momentum_fgsm,
)
from robench.attacks.single_step import FgsmConfig, StepLLConfig, fgsm, step_ll
from robench.attacks.square import SquareConfig
from robench.attacks.square import square as square_attack  # the package's `square` stays the module
from robench.errors import RobenchError

__all__ = ["Attack", "Labels", "REGISTRY", "attack_mode", "get_attack"]


@dataclass(frozen=True)
class Attack:
    """A registered attack: its function, its config class and what kind of attack it is.

    The kind travels with the attack so that other modules (the health checks, training)
    ask the registry instead of naming attacks. What each attack does is its function's docstring.
    """

    name: str
    run: Callable[..., Iterator[tuple[float, Tensor]]]  # (model, x, labels, eps, config, ...) -> (eps, x_adv)
    config: type
    single_step: bool  # one gradient for every eps (fgsm, step_ll); else iterative
    targeted: bool = False  # aims at chosen classes (least likely; the most likely wrong ones) rather than away
    counterpart: str | None = None  # the single-step attack an iterative one generalizes
    min_classes: int = 2  # apgd_t's DLR-T reads the 4th largest logit; fab_t needs a wrong class to aim at
    black_box: bool = False  # uses scores only, no gradients: the health checks' witness of gradient masking
    aims: bool = False  # takes ``label: target``: steps toward each sample's class of a targeted run (Labels.goal)
    ce_loss: bool = False  # its loss is base.loss_gradient's cross-entropy, so an ensemble may average members' losses
    budget: Callable[[Any, Sequence[float], int], int] = budget.single_step  # passes per sample: (config, eps, classes)


REGISTRY: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("fgsm", fgsm, FgsmConfig, True, aims=True, ce_loss=True),
        Attack("step_ll", step_ll, StepLLConfig, True, targeted=True, ce_loss=True),
        Attack("bim", bim, BimConfig, False, counterpart="fgsm", aims=True, budget=budget.schedule, ce_loss=True),
        Attack("iter_ll", iter_ll, IterLLConfig, False, targeted=True, counterpart="step_ll", budget=budget.schedule,
               ce_loss=True),
        Attack("pgd", pgd, PgdConfig, False, counterpart="fgsm", aims=True, budget=budget.pgd, ce_loss=True),
        Attack("apgd", apgd, ApgdConfig, False, budget=budget.apgd),
        Attack("apgd_t", apgd_t, ApgdTConfig, False, targeted=True, min_classes=4, budget=budget.apgd),
        Attack("fab_t", fab_t, FabTConfig, False, targeted=True, min_classes=3, budget=budget.fab),
        Attack("square", square_attack, SquareConfig, False, black_box=True, budget=budget.square),
        # the transfer family: one loop (robench.attacks.momentum), each config its paper's switches
        Attack("mi_fgsm", momentum_fgsm, MiFgsmConfig, False, aims=True, budget=budget.momentum, ce_loss=True),
        Attack("ni_fgsm", momentum_fgsm, NiFgsmConfig, False, aims=True, budget=budget.momentum, ce_loss=True),
        Attack("di_fgsm", momentum_fgsm, DiFgsmConfig, False, aims=True, budget=budget.momentum, ce_loss=True),
        Attack("ti_fgsm", momentum_fgsm, TiFgsmConfig, False, aims=True, budget=budget.momentum, ce_loss=True),
        Attack("vmi_fgsm", momentum_fgsm, VmiFgsmConfig, False, aims=True, budget=budget.momentum, ce_loss=True),
    )
}


def get_attack(name: str) -> Attack:
    """Look an attack up by name; an unknown name suggests the closest ones."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, REGISTRY, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(REGISTRY)}"
    raise RobenchError(f"unknown attack '{name}'; {hint}")
