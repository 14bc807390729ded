"""Iterative attacks: BIM (iterative FGSM), iter l.l. and PGD.

BIM and iter l.l. follow the paper's schedule: step 1/255 and
min(eps + 4, 1.25 eps) iterations (eps in 1/255 units), each step projected.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.attacks.base import (
    COUNT,
    POSITIVE,
    LabelKind,
    Labels,
    SampleNoise,
    attack_mode,
    gradient_and_logits,
    gradient_sign,
    project,
    to_unit,
    uniform_noise,
)
from robench.core.fields import check, typed
from robench.core.stop import check_stop


@dataclass(frozen=True)
class BimConfig:
    """BIM: repeated FGSM steps. ``steps`` None means the paper's schedule."""

    label: LabelKind = "true"
    step_size: float = 1.0
    steps: int | None = None

    def __post_init__(self) -> None:
        check(self, BIM_FIELDS)


BIM_FIELDS = typed(BimConfig, steps=COUNT, step_size=POSITIVE)


@dataclass(frozen=True)
class IterLLConfig:
    """iter l.l.: repeated steps toward the least-likely class of the clean image."""

    step_size: float = 1.0
    steps: int | None = None

    def __post_init__(self) -> None:
        check(self, ITER_LL_FIELDS)


ITER_LL_FIELDS = typed(IterLLConfig, steps=COUNT, step_size=POSITIVE)


@dataclass(frozen=True)
class PgdConfig:
    """PGD (Madry et al.): random start, then projected steps.

    ``step_size`` None means 2.5 * eps / steps, Madry et al.'s choice.
    """

    label: LabelKind = "true"
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        check(self, PGD_FIELDS)


PGD_FIELDS = typed(PgdConfig, steps=COUNT, step_size=POSITIVE)


def paper_steps(eps: float) -> int:
    """The paper's iteration count, floor(min(eps + 4, 1.25 eps)), at least 1 for eps > 0."""
    if eps == 0:
        return 0
    return max(1, math.floor(min(eps + 4, 1.25 * eps) + 1e-9))


def descend(
    model: nn.Module,
    x: Tensor,
    start: Tensor,
    target: Tensor,
    eps: float | Tensor,
    step: float | Tensor,
    steps: int,
    stop_on: Tensor | None = None,
) -> Tensor:
    """Run ``steps`` projected sign-gradient steps of size ``step`` from ``start``.

    All sizes are in [0, 1] units; a negative ``step`` moves toward ``target``. Training gives
    ``eps`` and ``step`` per example ([N, 1, 1, 1] tensors), never with ``stop_on``. With
    ``stop_on`` (the true labels, [N]) a sample stops at the first iterate that the model
    misclassifies and keeps it (early stopping): the gradient's own forward tells, so it
    costs no extra pass, and the other samples' steps are unchanged.
    """
    if stop_on is not None:
        return _descend_until_fooled(model, x, start, target, eps, step, steps, stop_on)
    x_adv = start
    for _ in range(steps):
        check_stop()
        x_adv = project(x_adv + step * gradient_sign(model, x_adv, target), x, eps)
    return x_adv


def _descend_until_fooled(model: nn.Module, x: Tensor, start: Tensor, target: Tensor, eps: float | Tensor,
                          step: float | Tensor, steps: int, stop_on: Tensor) -> Tensor:
    """``descend`` on the samples the model still classifies correctly, one gradient each per step.

    While every sample is still in play the whole batch is used as it is, without copies.
    """
    x_adv, live = start.clone(), None  # None: every sample
    for _ in range(steps):
        check_stop()
        if live is None:
            g, logits = gradient_and_logits(model, x_adv, target)
            keep = logits.argmax(1) == stop_on
            if bool(keep.all()):
                x_adv = project(x_adv + step * g, x, eps)
                continue
            live = torch.arange(len(x), device=x.device)
        else:
            g, logits = gradient_and_logits(model, x_adv[live], target[live])
            keep = logits.argmax(1) == stop_on[live]
        live, g = live[keep], g[keep]
        if len(live) == 0:
            break
        x_adv[live] = project(x_adv[live] + step * g, x[live], eps)
    return x_adv


def _schedule(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    eps: Sequence[float],
    step_size: float,
    steps: int | None,
    sign: float,
    stop_on: Tensor | None = None,
) -> Iterator[tuple[float, Tensor]]:
    """BIM-style sweep over eps (1/255 units); every eps starts at x, so trajectories share work.

    Without early stopping every eps walks one shared trunk until its own projection would
    bind (``_shared_sweep``): the paper's sweep 2, 4, 8, 16 takes about 23 gradients instead of 37,
    and every result is the one a separate run at that eps gives. With early stopping each eps
    runs alone on the samples still correct.
    """
    counts = [(e, paper_steps(e) if steps is None else steps) for e in eps]
    if stop_on is None:
        with attack_mode(model):
            done = _shared_sweep(model, x, target, [(to_unit(e), n) for e, n in counts], sign * to_unit(step_size))
        for (e, _), x_adv in zip(counts, done, strict=True):
            yield e, x_adv
        return
    for e, n in counts:
        if e == 0 or n == 0:
            yield e, x.clone()
            continue
        with attack_mode(model):
            x_adv = descend(model, x, x, target, to_unit(e), sign * to_unit(step_size), n, stop_on)
        yield e, x_adv


def _shared_sweep(model: nn.Module, x: Tensor, target: Tensor, runs: list[tuple[float, int]],
                  step: float) -> list[Tensor]:
    """``descend`` from x for every (eps, steps) in ``runs`` (eps in [0, 1] units), sharing the common trunk.

    Sign steps of one size from one start are the same for every eps until the projection onto
    the smallest ball changes an iterate. So one trunk walks at the largest eps still on it; at
    each step, an eps whose own projection would differ from the trunk's leaves it and finishes
    alone from its own projected iterate. The test is exact (``torch.equal`` on the batch), so each
    result is bit for bit a separate run's, at any step size; only gradients are saved.
    """
    out: list[Tensor | None] = [None] * len(runs)
    on_trunk = []
    for i, (e, n) in enumerate(runs):
        if e == 0 or n == 0:
            out[i] = x.clone()
        else:
            on_trunk.append(i)
    z, k = x, 0
    while on_trunk:
        for i in [i for i in on_trunk if runs[i][1] == k]:
            out[i] = z
            on_trunk.remove(i)
        if not on_trunk:
            break
        check_stop()
        moved = z + step * gradient_sign(model, z, target)
        widest = max(on_trunk, key=lambda i: runs[i][0])
        nxt = project(moved, x, runs[widest][0])
        for i in list(on_trunk):
            e, n = runs[i]
            if e == runs[widest][0]:
                continue
            own = project(moved, x, e)
            if not torch.equal(own, nxt):
                out[i] = descend(model, x, own, target, e, step, n - k - 1)
                on_trunk.remove(i)
        z, k = nxt, k + 1
    return [t if t is not None else x.clone() for t in out]


def bim(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: BimConfig,
    rng: torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Basic iterative method (iterative FGSM) up the loss of ``label``."""
    target = labels.pick(config.label)
    stop_on = labels.true if early_stop else None
    yield from _schedule(model, x, target, eps, config.step_size, config.steps, 1.0, stop_on)


def iter_ll(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: IterLLConfig,
    rng: torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Iterative least-likely class method: BIM steps down the loss of y_LL.

    Early stopping stops at misclassification (what robust accuracy counts), not at y_LL.
    """
    stop_on = labels.true if early_stop else None
    yield from _schedule(model, x, labels.least_likely, eps, config.step_size, config.steps, -1.0, stop_on)


def pgd(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: PgdConfig,
    rng: SampleNoise | torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Projected gradient descent with a uniform random start in the eps-ball.

    One noise draw in [-1, 1] serves every eps (scaled by it), so a start does not
    depend on which other eps values were asked for.
    """
    target = labels.pick(config.label)
    noise = uniform_noise(x, rng) if config.random_start else None
    for e in eps:
        if e == 0:  # the config holds at least 1 step
            yield e, x.clone()
            continue
        unit = to_unit(e)
        size = 2.5 * e / config.steps if config.step_size is None else config.step_size
        start = x if noise is None else (x + unit * noise).clamp(0.0, 1.0)
        with attack_mode(model):
            x_adv = descend(model, x, start, target, unit, to_unit(size), config.steps,
                            stop_on=labels.true if early_stop else None)
        yield e, x_adv
