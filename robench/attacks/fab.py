"""FAB-T: the targeted fast adaptive boundary attack, for L-infinity or L2.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack"
(ICML 2020, Sec. 3), in the targeted form that AutoAttack runs (Croce & Hein, "Reliable evaluation
of adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020, Sec. 4).
For each of the most likely wrong classes, FAB linearizes the boundary between the true class and
that class, projects onto it within the [0, 1] box, steps between the current point and the original,
and keeps the smallest adversarial example. FAB minimizes the norm; given eps (as AutoAttack and
torchattacks give it), a sample is fooled when that smallest example lies within eps. With
``norm: l2`` the projection, the step's mixing weight, the random start and the size of a found
example are all L2 (FAB, Sec. 3.1 and 3.3; AutoAttack's L2 run uses this FAB-T).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.attacks.base import (
    AT_LEAST_ONE,
    COUNT,
    UNIT,
    Labels,
    Norm,
    SampleNoise,
    attack_mode,
    clean_logits,
    in_pixels,
    l2_norms,
    project,
    ranked_targets,
    sample_noise,
)
from robench.core.fields import check, typed
from robench.core.stop import check_stop
from robench.errors import RobenchError


@dataclass(frozen=True)
class FabTConfig:
    """FAB-T: ``steps`` iterations and ``restarts`` runs for each of the ``targets`` most likely wrong classes.

    ``alpha_max`` caps the step's pull toward the original point, ``eta`` overshoots the
    projection, ``beta`` shrinks an adversarial iterate toward the original (the paper's values).
    ``norm``: the threat model, ``linf`` (eps in 1/255 units) or ``l2`` (eps the L2 norm of the
    whole perturbation in [0, 1] pixels, as RobustBench's 0.5 on CIFAR-10: no /255).
    """

    targets: int = 9
    steps: int = 100
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        check(self, FAB_T_FIELDS)


FAB_T_FIELDS = typed(FabTConfig, targets=COUNT, steps=COUNT, restarts=COUNT, alpha_max=UNIT, eta=AT_LEAST_ONE,
                     beta=UNIT)


def project_linf(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The smallest-L-inf step d with w . (t + d) = b and t + d in [0, 1]^D: FAB's projection (Sec. 3).

    t, w: [N, D] (t in [0, 1]); b: [N]; returns d: [N, D], row by row. Every coordinate moves the
    way that helps, by a common level or less where its box bound comes first; the level is the
    smallest that reaches the hyperplane. Where the hyperplane misses the box, d goes to the box
    corner nearest it. Coordinates with w = 0 never move.
    """
    need = b - (w * t).sum(1)
    way = w.sign() * torch.where(need >= 0, 1.0, -1.0).to(w.dtype)[:, None]
    room = torch.where(way > 0, 1 - t, t) * (way != 0)
    level = _level(room, w.abs(), need.abs())
    return way * torch.minimum(room, level[:, None])


def project_l2(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The smallest-L2 step d with w . (t + d) = b and t + d in [0, 1]^D: FAB's L2 projection (Sec. 3.1).

    t, w: [N, D] (t in [0, 1]); b: [N]; returns d: [N, D], row by row. The optimum is
    d = clip(lam w, -t, 1 - t) for the one lam that reaches the hyperplane (the box's KKT
    conditions), so coordinate i moves |lam| |w_i| until its bound: the L-inf level problem with
    rooms scaled by 1 / |w_i| and weights w_i^2, solved exactly rather than by AutoAttack's bisection.
    Where the hyperplane misses the box, d goes to the box corner nearest it, as project_linf.
    """
    need = b - (w * t).sum(1)
    way = w.sign() * torch.where(need >= 0, 1.0, -1.0).to(w.dtype)[:, None]
    room = torch.where(way > 0, 1 - t, t) * (way != 0)
    size = w.abs()
    level = _level(room / size.clamp_min(1e-30), size * size, need.abs())
    move = torch.where(size > 0, level[:, None] * size, 0.0)  # inf * 0 would be NaN where w = 0
    return way * torch.minimum(room, move)


def _norms(d: Tensor, norm: Norm) -> Tensor:
    """[N] the L-inf or L2 norm of each row of d ([N, ...])."""
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def stable_order(values: Tensor) -> Tensor:
    """Per row, the permutation sorting ``values`` ([N, D], >= 0) ascending, ties by position: a stable argsort.

    FAB sorts every row twice a step, and a stable float sort was a fifth of its time on small models.
    The bits of a non-negative float order as the float does, so bits and position packed into one
    int64 give distinct keys that any sort puts in the stable order, and numpy sorts those about
    twice as fast on the CPU. Adding 0.0 turns -0.0 into 0.0, which a float sort counts equal.
    """
    if values.dtype != torch.float32:  # the packing needs 32-bit floats
        return values.sort(dim=1, stable=True).indices
    shift = max(1, (values.shape[1] - 1).bit_length())
    bits = (values + 0.0).view(torch.int32).long()
    keys = (bits << shift) | torch.arange(values.shape[1], device=values.device)
    low = (1 << shift) - 1
    if keys.device.type == "cpu":
        return torch.from_numpy(np.sort(keys.numpy(), axis=1) & low)
    return keys.sort(dim=1).values & low


def _level(room: Tensor, weight: Tensor, need: Tensor) -> Tensor:
    """Per row, the smallest lam >= 0 with sum(weight * min(lam, room)) >= need; inf where no lam reaches it.

    room, weight: [N, D] (>= 0); need: [N]. The sum is piecewise linear in lam with breakpoints at
    the rooms, so the level follows from the sorted rooms without a search.
    """
    order = stable_order(room)
    room, weight = room.gather(1, order), weight.gather(1, order)
    capped = F.pad((weight * room).cumsum(1)[:, :-1], (1, 0))  # sum over j < k of weight_j room_j
    free = weight.flip(1).cumsum(1).flip(1)  # sum over j >= k of weight_j
    reach = capped + room * free  # the sum at lam = room_k
    k = (reach < need[:, None]).sum(1, keepdim=True)
    inside = k < room.shape[1]
    k = k.clamp(max=room.shape[1] - 1)
    slope = free.gather(1, k)
    lam = torch.where(slope > 0, (need[:, None] - capped.gather(1, k)) / slope.clamp_min(1e-30), room.gather(1, k))
    return torch.where(inside, lam.clamp_min(0), math.inf).squeeze(1)


def margin_gradient(model: nn.Module, x: Tensor, y: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits [N, K], the margin z_target - z_y [N] and its input gradient (shaped like x), one pass each way.

    The margins are summed before the backward pass, so a sample's gradient is its own.
    """
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        rows = torch.arange(len(x), device=x.device)
        margin = logits[rows, target] - logits[rows, y]
        grad = torch.autograd.grad(margin.sum(), xg, allow_unused=True)[0] if margin.requires_grad else None
    return logits.detach(), margin.detach(), torch.zeros_like(xg) if grad is None else grad


def fab_step(x0: Tensor, x1: Tensor, margin: Tensor, grad: Tensor, config: FabTConfig) -> Tensor:
    """The next FAB iterate from x1 (FAB, Sec. 3): a step biased between the projections of x1 and x0.

    x0, x1, grad: [N, C, H, W] in [0, 1] (original and current point); margin: [N] at x1. Both
    points are projected onto the linearized boundary within the box, overshot by eta, and mixed
    with weight alpha = min(|d1| / (|d1| + |d0|), alpha_max) on the original's projection.
    """
    w = grad.flatten(1)
    b = (w * x1.flatten(1)).sum(1) - margin
    project_onto = project_linf if config.norm == "linf" else project_l2
    d1 = project_onto(x1.flatten(1), w, b)
    d0 = project_onto(x0.flatten(1), w, b)
    a1, a0 = _norms(d1, config.norm).clamp_min(1e-8), _norms(d0, config.norm).clamp_min(1e-8)
    alpha = (a1 / (a1 + a0)).clamp(0.0, config.alpha_max)[:, None]
    mixed = (x1.flatten(1) + config.eta * d1) * (1 - alpha) + (x0.flatten(1) + config.eta * d0) * alpha
    return mixed.clamp(0.0, 1.0).reshape_as(x1)


@dataclass
class _Found:
    """Per sample: the smallest adversarial example so far, its norm (inf: none yet), the latest iterate."""

    best: Tensor
    norm: Tensor
    last: Tensor

    @classmethod
    def empty(cls, x: Tensor) -> _Found:
        return cls(x.clone(), torch.full((len(x),), math.inf, device=x.device, dtype=x.dtype), x.clone())

    def keep(self, rows: Tensor, points: Tensor, norms: Tensor) -> None:
        """Record the adversarial ``points`` of ``rows`` (``norms``) that are smaller than their best so far."""
        better = norms < self.norm[rows]
        self.best[rows[better]], self.norm[rows[better]] = points[better], norms[better]

    def merge(self, rows: Tensor, run: _Found) -> None:
        """Take a run on ``rows``: its smaller examples and its latest iterates."""
        self.keep(rows, run.best, run.norm)
        self.last[rows] = run.last

    def result(self, x: Tensor, eps: float, norm: Norm = "linf") -> Tensor:
        """The best example where it is within eps; else the best (or latest) point projected into the eps-ball."""
        fooled = (self.norm <= eps).view(-1, *[1] * (x.dim() - 1))
        fallback = torch.where(self.norm.isfinite().view_as(fooled), self.best, self.last)
        inside = project(fallback, x, eps, norm)
        return torch.where(fooled, self.best, inside)


def fab_run(model: nn.Module, x0: Tensor, y: Tensor, target: Tensor, start: Tensor, eps: float, config: FabTConfig,
            early_stop: bool = False) -> _Found:
    """``config.steps`` FAB iterates from ``start`` toward ``target`` (one class per sample, [N]), x0 the original.

    An adversarial iterate (not classified y) is recorded and then shrunk toward x0 by beta
    (FAB, Sec. 3). With ``early_stop`` a sample stops once it has one within eps ([0, 1] pixels, in config.norm).
    Each step costs a forward and backward pass for the gradient and a forward pass to check
    the new iterate, as AutoAttack's FAB: cheaper than a second gradient wherever the step
    overshot the boundary (eta > 1), which is most steps.
    """
    found, x1, live = _Found.empty(x0), start.clone(), torch.arange(len(x0), device=x0.device)
    margin, grad = torch.empty(len(x0), device=x0.device, dtype=x0.dtype), torch.empty_like(x0)
    for _ in range(config.steps):
        check_stop()
        _, margin[live], grad[live] = margin_gradient(model, x1[live], y[live], target[live])
        x1[live] = fab_step(x0[live], x1[live], margin[live], grad[live], config)
        with torch.no_grad():  # FAB's steps overshoot the boundary by design: most iterates are adversarial
            adv = live[model(x1[live]).argmax(1) != y[live]]
        found.keep(adv, x1[adv], _norms(x1[adv] - x0[adv], config.norm))
        x1[adv] = x0[adv] + config.beta * (x1[adv] - x0[adv])
        live = live[found.norm[live] > eps] if early_stop else live
        if len(live) == 0:
            break
    found.last = x1
    return found


def _need_three(logits: Tensor) -> None:
    classes = logits.shape[1]
    if classes < 3:
        raise RobenchError(f"fab_t needs at least 3 classes to choose a target class; the model has {classes}")


def random_start(x: Tensor, eps: float, noise: SampleNoise, norm: Norm = "linf") -> Tensor:
    """A restart's start (FAB, Sec. 3): x moved by eps / 2 in the norm, per-sample random direction, clipped to [0, 1].

    x: [N, C, H, W] in [0, 1]; eps in [0, 1] units. AutoAttack's FAB starts a restart the same way:
    for L-inf a uniform draw scaled to L-inf norm eps / 2, for L2 a Gaussian one (a uniform
    direction) scaled to L2 norm eps / 2.
    """
    if norm == "l2":
        g = noise.normal_like(x)[0]
        return (x + 0.5 * eps * g / l2_norms(g).clamp_min(1e-12)).clamp(0.0, 1.0)
    u = noise.uniform_like(x)
    scale = u.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    return (x + 0.5 * eps * u / scale).clamp(0.0, 1.0)


def _attack(model: nn.Module, x: Tensor, y: Tensor, targets: Tensor, wrong: Tensor, eps: float,
            config: FabTConfig, noise: SampleNoise, early_stop: bool) -> Tensor:
    """FAB-T at one eps ([0, 1] pixels, in config.norm): each target class in turn, on the samples not yet fooled.

    Samples misclassified when clean (``wrong``, [N]) are fooled by x itself and never attacked.
    """
    found = _Found.empty(x)
    found.norm[wrong] = 0.0
    for k in range(targets.shape[1]):
        for r in range(config.restarts):
            rows = (found.norm > eps).nonzero().flatten()
            if len(rows) == 0:
                return found.result(x, eps, config.norm)
            start = x[rows] if r == 0 else random_start(x[rows], eps, noise.rows(rows).child(f"{k}/{r}"), config.norm)
            found.merge(rows, fab_run(model, x[rows], y[rows], targets[rows, k], start, eps, config, early_stop))
    return found.result(x, eps, config.norm)


def fab_t(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: FabTConfig,
    rng: SampleNoise | torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Targeted FAB for L-inf or L2 (Croce & Hein, ICML 2020): the smallest example toward each likely wrong class.

    x: [N, C, H, W] in [0, 1]; eps in 1/255 units for ``norm: linf``, and for ``norm: l2`` the L2 norm
    of the whole perturbation in [0, 1] pixels, taken as given (no /255); each an independent run from x.
    The targets are the ``config.targets`` classes (at most classes - 1) with the highest clean logits
    (``labels.logits``, or one forward pass) other than ``labels.true``. A sample's result is its
    smallest adversarial example if that is within eps, else its best or latest point projected into
    the eps-ball. Raises RobenchError with fewer than 3 classes.
    """
    noise = sample_noise(rng, len(x))
    logits = clean_logits(model, x, labels)
    _need_three(logits)
    targets = ranked_targets(logits, labels.true, config.targets)
    wrong = logits.argmax(1) != labels.true
    for e in eps:
        if e == 0:
            yield e, x.clone()
            continue
        with attack_mode(model):
            unit = in_pixels(e, config.norm)
            yield e, _attack(model, x, labels.true, targets, wrong, unit, config, noise, early_stop)
