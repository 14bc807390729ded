"""Single-step attacks: FGSM and step l.l. (Kurakin et al. 2017, eqs. 1 and 2).

Each computes one gradient per batch and reuses it for every eps. ``early_stop`` is accepted
and changes nothing: one step has nothing to stop (the engine keeps a smaller eps's success).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.attacks.base import LabelKind, Labels, attack_mode, gradient_sign, to_unit
from robench.core.fields import check, typed


@dataclass(frozen=True)
class FgsmConfig:
    """FGSM: one step up the loss of ``label`` (true labels leak; see leak-check)."""

    label: LabelKind = "true"

    def __post_init__(self) -> None:
        check(self, FGSM_FIELDS)


FGSM_FIELDS = typed(FgsmConfig)


@dataclass(frozen=True)
class StepLLConfig:
    """step l.l.: one step down the loss of the least-likely class. No options."""


def sweep(x: Tensor, direction: Tensor, eps: Sequence[float]) -> Iterator[tuple[float, Tensor]]:
    """x + eps * direction clipped to [0, 1], for every eps; eps 0 returns x unchanged."""
    for e in eps:
        if e == 0:
            yield e, x.clone()
        else:
            yield e, (x + to_unit(e) * direction).clamp(0.0, 1.0)


def fgsm(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: FgsmConfig,
    rng: torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Fast gradient sign method: x + eps * sign(grad_x J(x, y))."""
    with attack_mode(model):
        direction = gradient_sign(model, x, labels.pick(config.label))
    yield from sweep(x, direction, eps)


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
