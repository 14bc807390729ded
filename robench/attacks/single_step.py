"""Single-step attacks: FGSM and step l.l. (Kurakin et al. 2017, eqs. 1 and 2).

Each computes one gradient per batch and reuses it for every eps. FGSM also runs under L2 (``norm: l2``):
FGM, x + eps * g / ||g||_2 (Goodfellow et al. 2015; Miyato et al. 2016), eps then the L2 norm of the
perturbation in [0, 1] pixels, taken as given (no /255). step l.l. is the paper's L-infinity attack only.
``early_stop`` is accepted and changes nothing: one step has nothing to stop (the engine keeps a smaller eps's success).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.attacks.base import (
    LINF_ONLY,
    AimKind,
    Labels,
    Norm,
    aim,
    attack_mode,
    gradient_sign,
    gradient_step,
    in_pixels,
)
from robench.core.fields import check, typed


@dataclass(frozen=True)
class FgsmConfig:
    """FGSM: one step up the loss of ``label`` (true labels leak; see leak-check), or down the target's.

    ``label: target`` steps toward each sample's target class (``Labels.goal``, a targeted run's), as
    step l.l. does toward the least-likely one. ``norm: l2`` makes it FGM, with eps the perturbation's
    L2 norm in [0, 1] pixels (no /255).
    """

    label: AimKind = "true"
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        check(self, FGSM_FIELDS)


FGSM_FIELDS = typed(FgsmConfig)


@dataclass(frozen=True)
class StepLLConfig:
    """step l.l.: one step down the loss of the least-likely class. ``norm`` is linf only: no L2 version."""

    norm: Norm = "linf"

    def __post_init__(self) -> None:
        check(self, STEP_LL_FIELDS)


STEP_LL_FIELDS = typed(StepLLConfig, norm=LINF_ONLY)


def sweep(x: Tensor, direction: Tensor, eps: Sequence[float], norm: Norm = "linf") -> Iterator[tuple[float, Tensor]]:
    """x + eps * direction clipped to [0, 1], for every eps (units of ``norm``); eps 0 returns x unchanged."""
    for e in eps:
        if e == 0:
            yield e, x.clone()
        else:
            yield e, (x + in_pixels(e, norm) * direction).clamp(0.0, 1.0)


def fgsm(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: FgsmConfig,
    rng: torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Fast gradient sign method: x + eps * sign(grad_x J(x, y)), eps in 1/255 units.

    With ``norm: l2``, FGM: x + eps * g / ||g||_2 per sample, eps the L2 norm in [0, 1] pixels (no /255).
    ``label: target``: x - eps * sign(grad_x J(x, y_target)), the step l.l. step toward the goal.
    """
    classes, sign = aim(labels, config.label)
    with attack_mode(model):
        direction = sign * gradient_step(model, x, classes, config.norm)
    yield from sweep(x, direction, eps, config.norm)


def step_ll(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: StepLLConfig,
    rng: torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """One step toward the least-likely class: x - eps * sign(grad_x J(x, y_LL))."""
    with attack_mode(model):
        direction = -gradient_sign(model, x, labels.least_likely)
    yield from sweep(x, direction, eps)
