"""Iterative attacks: BIM (iterative FGSM), iter l.l. and PGD.

BIM and iter l.l. follow the paper's schedule: step 1/255 and
min(eps + 4, 1.25 eps) iterations (eps in 1/255 units), each step projected.

BIM and PGD also run under L2 (``norm: l2``): each step is alpha * g / ||g||_2, projected onto the
L2 ball of radius eps, then into [0, 1]. There eps and the step size are L2 norms of the whole
perturbation in [0, 1] pixels, taken as given (no /255). iter l.l. is the paper's L-infinity attack only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.attacks.base import (
    COUNT,
    LINF_ONLY,
    POSITIVE,
    AimKind,
    Labels,
    Norm,
    SampleNoise,
    aim,
    attack_mode,
    gradient_and_logits,
    gradient_step,
    in_pixels,
    l2_ball_noise,
    project,
    uniform_noise,
)
from robench.core.fields import check, typed
from robench.core.stop import check_stop


@dataclass(frozen=True)
class BimConfig:
    """BIM: repeated FGSM steps. ``steps`` None means the paper's schedule.

    ``label: target`` steps down the loss of each sample's target class (``Labels.goal``), as iter l.l.
    does for the least-likely one. ``norm: l2``: eps and ``step_size`` are L2 norms in [0, 1] pixels
    (no /255), and the schedule counts eps in steps: floor(min(eps / step_size + 4, 1.25 eps / step_size)).
    """

    label: AimKind = "true"
    step_size: float = 1.0
    steps: int | None = None
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        check(self, BIM_FIELDS)


BIM_FIELDS = typed(BimConfig, steps=COUNT, step_size=POSITIVE)


@dataclass(frozen=True)
class IterLLConfig:
    """iter l.l.: repeated steps toward the least-likely class of the clean image; ``norm`` is linf only."""

    step_size: float = 1.0
    steps: int | None = None
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        check(self, ITER_LL_FIELDS)


ITER_LL_FIELDS = typed(IterLLConfig, steps=COUNT, step_size=POSITIVE, norm=LINF_ONLY)


@dataclass(frozen=True)
class PgdConfig:
    """PGD (Madry et al.): random start, then projected steps.

    ``step_size`` None means 2.5 * eps / steps, Madry et al.'s choice. ``label: target`` descends the loss of
    each sample's target class (``Labels.goal``), the targeted PGD of Madry et al. ``norm: l2``: eps and
    ``step_size`` are L2 norms in [0, 1] pixels (no /255); the random start is uniform in the L2 ball.
    """

    label: AimKind = "true"
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        check(self, PGD_FIELDS)


PGD_FIELDS = typed(PgdConfig, steps=COUNT, step_size=POSITIVE)


def paper_steps(eps: float) -> int:
    """The paper's iteration count, floor(min(eps + 4, 1.25 eps)), at least 1 for eps > 0."""
    if eps == 0:
        return 0
    return max(1, math.floor(min(eps + 4, 1.25 * eps) + 1e-9))


def schedule_steps(eps: float, step_size: float, steps: int | None, norm: Norm) -> int:
    """BIM's iterations at eps: ``steps``, else the paper's schedule (L2: with eps counted in steps of step_size)."""
    if steps is not None:
        return steps
    return paper_steps(eps) if norm == "linf" else paper_steps(eps / step_size)


def descend(
    model: nn.Module,
    x: Tensor,
    start: Tensor,
    target: Tensor,
    eps: float | Tensor,
    step: float | Tensor,
    steps: int,
    stop_on: Tensor | None = None,
    norm: Norm = "linf",
) -> Tensor:
    """Run ``steps`` projected steepest-ascent steps of size ``step`` in ``norm`` from ``start``.

    All sizes are in [0, 1] units; a negative ``step`` moves toward ``target``. Training gives
    ``eps`` and ``step`` per example ([N, 1, 1, 1] tensors), never with ``stop_on``. With
    ``stop_on`` (the true labels, [N]) a sample stops at the first iterate that the model
    misclassifies and keeps it (early stopping): the gradient's own forward tells, so it
    costs no extra pass, and the other samples' steps are unchanged.
    """
    if stop_on is not None:
        return _descend_until_fooled(model, x, start, target, eps, step, steps, stop_on, norm)
    x_adv = start
    for _ in range(steps):
        check_stop()
        x_adv = project(x_adv + step * gradient_step(model, x_adv, target, norm), x, eps, norm)
    return x_adv


def _descend_until_fooled(model: nn.Module, x: Tensor, start: Tensor, target: Tensor, eps: float | Tensor,
                          step: float | Tensor, steps: int, stop_on: Tensor, norm: Norm) -> Tensor:
    """``descend`` on the samples the model still classifies correctly, one gradient each per step.

    While every sample is still in play the whole batch is used as it is, without copies.
    """
    x_adv, live = start.clone(), None  # None: every sample
    for _ in range(steps):
        check_stop()
        if live is None:
            g, logits = gradient_and_logits(model, x_adv, target, norm)
            keep = logits.argmax(1) == stop_on
            if bool(keep.all()):
                x_adv = project(x_adv + step * g, x, eps, norm)
                continue
            live = torch.arange(len(x), device=x.device)
        else:
            g, logits = gradient_and_logits(model, x_adv[live], target[live], norm)
            keep = logits.argmax(1) == stop_on[live]
        live, g = live[keep], g[keep]
        if len(live) == 0:
            break
        x_adv[live] = project(x_adv[live] + step * g, x[live], eps, norm)
    return x_adv


def _schedule(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    eps: Sequence[float],
    config: BimConfig | IterLLConfig,
    sign: float,
    stop_on: Tensor | None = None,
) -> Iterator[tuple[float, Tensor]]:
    """BIM-style sweep over eps (units of ``config.norm``); every eps starts at x, so trajectories share work.

    Without early stopping every eps walks one shared trunk until its own projection would
    bind (``_shared_sweep``): the paper's sweep 2, 4, 8, 16 takes about 23 gradients instead of 37,
    and every result is the one a separate run at that eps gives. With early stopping each eps
    runs alone on the samples still correct.
    """
    norm = config.norm
    counts = [(e, schedule_steps(e, config.step_size, config.steps, norm)) for e in eps]
    step = sign * in_pixels(config.step_size, norm)
    if stop_on is None:
        with attack_mode(model):
            done = _shared_sweep(model, x, target, [(in_pixels(e, norm), n) for e, n in counts], step, norm)
        for (e, _), x_adv in zip(counts, done, strict=True):
            yield e, x_adv
        return
    for e, n in counts:
        if e == 0 or n == 0:
            yield e, x.clone()
            continue
        with attack_mode(model):
            x_adv = descend(model, x, x, target, in_pixels(e, norm), step, n, stop_on, norm)
        yield e, x_adv


def _shared_sweep(model: nn.Module, x: Tensor, target: Tensor, runs: list[tuple[float, int]],
                  step: float, norm: Norm) -> list[Tensor]:
    """``descend`` from x for every (eps, steps) in ``runs`` (eps in [0, 1] units), sharing the common trunk.

    Steps of one size from one start are the same for every eps until the projection onto
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
        moved = z + step * gradient_step(model, z, target, norm)
        widest = max(on_trunk, key=lambda i: runs[i][0])
        nxt = project(moved, x, runs[widest][0], norm)
        for i in list(on_trunk):
            e, n = runs[i]
            if e == runs[widest][0]:
                continue
            own = project(moved, x, e, norm)
            if not torch.equal(own, nxt):
                out[i] = descend(model, x, own, target, e, step, n - k - 1, norm=norm)
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
    """Basic iterative method (iterative FGSM) up the loss of ``label``; eps in 1/255 units.

    With ``norm: l2`` each step is step_size * g / ||g||_2 and eps the L2 norm in [0, 1] pixels (no /255).
    ``label: target`` steps toward the goal, as iter l.l.; early stopping still stops at misclassification.
    """
    target, sign = aim(labels, config.label)
    stop_on = labels.true if early_stop else None
    yield from _schedule(model, x, target, eps, config, sign, stop_on)


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
    yield from _schedule(model, x, labels.least_likely, eps, config, -1.0, stop_on)


def pgd(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: PgdConfig,
    rng: SampleNoise | torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Projected gradient descent with a uniform random start in the eps-ball; eps in 1/255 units.

    With ``norm: l2`` eps is the L2 norm in [0, 1] pixels (no /255), each step step_size * g / ||g||_2,
    and the start uniform in the L2 ball. One noise draw in the unit ball serves every eps (scaled
    by it), so a start does not depend on which other eps values were asked for. ``label: target`` steps
    down the goal's loss; early stopping still stops at misclassification.
    """
    (target, sign), norm = aim(labels, config.label), config.norm
    noise = None
    if config.random_start:
        noise = uniform_noise(x, rng) if norm == "linf" else l2_ball_noise(x, rng)
    for e in eps:
        if e == 0:  # the config holds at least 1 step
            yield e, x.clone()
            continue
        unit = in_pixels(e, norm)
        size = 2.5 * e / config.steps if config.step_size is None else config.step_size
        start = x if noise is None else (x + unit * noise).clamp(0.0, 1.0)
        with attack_mode(model):
            x_adv = descend(model, x, start, target, unit, sign * in_pixels(size, norm), config.steps,
                            stop_on=labels.true if early_stop else None, norm=norm)
        yield e, x_adv
