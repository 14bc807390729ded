"""Auto-PGD (Croce & Hein, ICML 2020): APGD on cross-entropy or DLR, and targeted APGD on DLR-T; L-infinity or L2.

APGD is PGD with momentum whose step size, starting at 2 eps, halves at checkpoints where the
loss stopped rising, each time restarting from the best point so far (the paper's Algorithm 1,
Section 3). Nothing needs tuning per model, which is why AutoAttack builds on it. Every decision
(step size, best point, restart) is taken per sample, so a sample's example does not depend on its batch.

``norm: l2`` is the paper's L2 version, AutoAttack's L2 run: the step is the gradient over its L2 norm,
the projection onto the L2 ball, the random start on that ball's surface. eps is then the L2 norm of the
whole perturbation in [0, 1] pixels, taken as given (no /255).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.attacks.base import (
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
    steepest,
)
from robench.attacks.malt import malt_targets
from robench.core.fields import check, typed
from robench.core.stop import check_stop
from robench.errors import RobenchError

ALPHA = 0.75  # momentum weight of the new step (Section 3.2); the first step has none
TIE = 1e-12  # keeps DLR finite where the logits it divides by tie (as AutoAttack's own code does)
RISE = 1e-4  # a loss rises when it gains more than RISE * max(1, |loss|): see rose()


@dataclass(frozen=True)
class ApgdConfig:
    """APGD (Algorithm 1) on cross-entropy or the DLR loss; restarts run only on samples not yet fooled."""

    loss: Literal["ce", "dlr"] = "ce"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    random_start: bool = True
    norm: Norm = "linf"  # l2: eps is the L2 norm in [0, 1] pixels (no /255)

    def __post_init__(self) -> None:
        check(self, APGD_FIELDS)


APGD_FIELDS = typed(ApgdConfig, steps=COUNT, restarts=COUNT, rho=UNIT)


@dataclass(frozen=True)
class ApgdTConfig:
    """Targeted APGD on DLR-T, once for each of ``targets`` classes other than the true one.

    ``target_select``: ``logits`` takes the most likely classes (AutoAttack); ``malt`` the ones
    MALT's linear estimate puts nearest among those 9 (robench.attacks.malt).
    """

    targets: int = 9
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    random_start: bool = True
    target_select: Literal["logits", "malt"] = "logits"
    norm: Norm = "linf"  # l2: eps is the L2 norm in [0, 1] pixels (no /255)

    def __post_init__(self) -> None:
        check(self, APGD_T_FIELDS)


APGD_T_FIELDS = typed(ApgdTConfig, targets=COUNT, steps=COUNT, restarts=COUNT, rho=UNIT)


# --- the checkpoint schedule and the losses ---------------------------------------------------------


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps), j >= 1, at which APGD may halve its step (Section 3.2).

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), kept below 1. The p_j are
    whole hundredths, computed as integers so that no float rounding moves a checkpoint; with
    few steps two p_j can share an iteration, which then counts once.
    """
    marks, before, p = set(), 0, 22
    while p < 100:
        marks.add(-(-p * steps // 100))
        before, p = p, p + max(p - before - 3, 6)
    return sorted(m for m in marks if 0 < m <= steps)


def rose(new: Tensor, old: Tensor) -> Tensor:
    """Per sample, did the loss rise from ``old`` to ``new`` by more than float noise?

    A model's last float bits depend on the batch size (convolution and matrix kernels block by
    batch), and APGD's late iterates differ in loss by about that much: a plain ``new > old``
    would make a sample's best point and step size depend on its batch. A rise must exceed
    RISE * max(1, |old|), far above that noise and far below what the attack gains early on.
    """
    return new > old + RISE * old.abs().clamp_min(1.0)


def _need_classes(logits: Tensor, count: int, what: str) -> None:
    if logits.shape[1] < count:
        raise RobenchError(f"{what} needs at least {count} classes; the model gives {logits.shape[1]}")


def dlr_loss(logits: Tensor, true: Tensor) -> Tensor:
    """Difference of logits ratio per sample (eq. 6): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3).

    logits [N, classes], true [N] -> [N]. Positive exactly when the sample is misclassified, and
    unchanged by shifting or rescaling the logits, so it still has a gradient where
    cross-entropy's saturates. Raises RobenchError with fewer than 3 classes.
    """
    _need_classes(logits, 3, "the DLR loss")
    top = logits.topk(3, dim=1).values
    z_y = logits.gather(1, true[:, None]).squeeze(1)
    other = logits.scatter(1, true[:, None], float("-inf")).amax(1)
    return (other - z_y) / (top[:, 0] - top[:, 2] + TIE)


def dlr_targeted_loss(logits: Tensor, true: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR per sample (Section 4, DLR-T): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

    logits [N, classes], true and target [N] -> [N]. Raises RobenchError with fewer than 4 classes.
    """
    _need_classes(logits, 4, "the targeted DLR loss")
    top = logits.topk(4, dim=1).values
    z_y, z_t = logits.gather(1, true[:, None]).squeeze(1), logits.gather(1, target[:, None]).squeeze(1)
    return (z_t - z_y) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + TIE)


@dataclass(frozen=True)
class _Goal:
    """What one run climbs (``ce``, ``dlr`` or ``dlr-t``), the true labels [N] and, for DLR-T only, the targets [N]."""

    loss: Literal["ce", "dlr", "dlr-t"]
    true: Tensor
    target: Tensor | None = None

    def rows(self, index: Tensor) -> _Goal:
        """The same goal for these samples (index: [K] positions)."""
        return _Goal(self.loss, self.true[index], None if self.target is None else self.target[index])

    def value(self, logits: Tensor) -> Tensor:
        """The loss per sample, [N]."""
        if self.target is not None:  # dlr-t, the one loss with targets
            return dlr_targeted_loss(logits, self.true, self.target)
        if self.loss == "ce":
            return F.cross_entropy(logits, self.true, reduction="none")
        return dlr_loss(logits, self.true)


@overload
def _evaluate(model: nn.Module, x: Tensor, goal: _Goal, need_grad: Literal[True],
              norm: Norm) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def _evaluate(model: nn.Module, x: Tensor, goal: _Goal, need_grad: bool,
              norm: Norm) -> tuple[Tensor | None, Tensor, Tensor]: ...
def _evaluate(model: nn.Module, x: Tensor, goal: _Goal, need_grad: bool,
              norm: Norm) -> tuple[Tensor | None, Tensor, Tensor]:
    """At x: the steepest direction in ``norm`` of d(summed loss)/dx (None when not needed), the loss per
    sample [N], and misclassified [N].

    The loss is summed, never averaged, so a sample's gradient does not depend on its batch; a
    loss that does not depend on x has a zero gradient.
    """
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(need_grad)
        logits = model(xg)
        loss = goal.value(logits)
        sign = None
        if need_grad:
            grads = torch.autograd.grad(loss.sum(), xg, allow_unused=True) if loss.requires_grad else (None,)
            sign = steepest(torch.zeros_like(xg) if grads[0] is None else grads[0], norm)
    return sign, loss.detach(), logits.detach().argmax(1) != goal.true


# --- one run: Algorithm 1 -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ball:
    """The threat model of one eps: its radius in [0, 1] pixel units and its norm."""

    unit: float
    norm: Norm = "linf"


@dataclass
class _Run:
    """One APGD run's state, a row per sample: the iterates, step sizes, best point, first success."""

    x: Tensor  # [N, C, H, W] clean images
    unit: float  # eps in [0, 1] pixel units
    norm: Norm
    cur: Tensor  # x^(k)
    prev: Tensor  # x^(k-1)
    sign: Tensor  # the gradient's steepest direction at x^(k): its sign (linf), g / ||g||_2 (l2)
    loss: Tensor  # f(x^(k)), [N]
    step: Tensor  # eta, [N, 1, 1, 1]
    best: Tensor  # x_max
    best_sign: Tensor
    best_loss: Tensor  # f_max, [N]
    out: Tensor  # the first misclassified iterate, where there is one
    fooled: Tensor  # [N] bool
    ups: Tensor  # [N] steps since the last checkpoint where the loss rose
    reduced: Tensor  # [N] bool: the step was halved at the last checkpoint
    best_at_check: Tensor  # f_max at the last checkpoint

    @classmethod
    def begin(cls, model: nn.Module, x: Tensor, start: Tensor, goal: _Goal, unit: float, norm: Norm) -> _Run:
        """The state at the starting point x^(0), after its one forward and backward pass."""
        sign, loss, wrong = _evaluate(model, start, goal, True, norm)
        step = torch.full((len(x),) + (1,) * (x.dim() - 1), 2 * unit, dtype=x.dtype, device=x.device)
        out = torch.where(wrong.view(step.shape), start, x)
        ups = torch.zeros(len(x), dtype=torch.long, device=x.device)
        return cls(x, unit, norm, start.clone(), start.clone(), sign, loss.clone(), step, start.clone(), sign.clone(),
                   loss.clone(), out, wrong, ups, torch.zeros_like(wrong), loss.clone())

    def result(self) -> Tensor:
        """Per sample: the first misclassified iterate, else the point of highest loss."""
        return torch.where(self.fooled.view(self.step.shape), self.out, self.best)


def _advance(model: nn.Module, run: _Run, goal: _Goal, live: Tensor, alpha: float, need_grad: bool) -> None:
    """One momentum step on the live samples (Algorithm 1, lines 5-6), then their bookkeeping (lines 7-9)."""
    x, cur, prev = run.x[live], run.cur[live], run.prev[live]
    z = project(cur + run.step[live] * run.sign[live], x, run.unit, run.norm)
    nxt = project(cur + (z - cur) * alpha + (cur - prev) * (1 - alpha), x, run.unit, run.norm)
    sign, loss, wrong = _evaluate(model, nxt, goal.rows(live), need_grad, run.norm)
    run.ups[live] += rose(loss, run.loss[live]).long()
    run.prev[live], run.cur[live], run.loss[live] = cur, nxt, loss
    if sign is not None:  # the last iterate needs no gradient: no step follows it
        run.sign[live] = sign
    better = rose(loss, run.best_loss[live])
    run.best[live[better]], run.best_loss[live[better]] = nxt[better], loss[better]
    if sign is not None:
        run.best_sign[live[better]] = sign[better]
    new = wrong & ~run.fooled[live]
    run.out[live[new]], run.fooled[live[new]] = nxt[new], True


def _checkpoint(run: _Run, length: int, rho: float) -> None:
    """At checkpoint w_j (Section 3.2): halve eta and go back to x_max where condition 1 or 2 holds.

    Condition 1: the loss rose in fewer than rho * (w_j - w_{j-1}) of the steps since w_{j-1}.
    Condition 2: eta was not halved at w_{j-1} and f_max has not improved since.
    """
    halve = (run.ups < rho * length) | (~run.reduced & (run.best_loss <= run.best_at_check))
    run.step[halve] /= 2
    run.cur[halve], run.sign[halve], run.loss[halve] = run.best[halve], run.best_sign[halve], run.best_loss[halve]
    run.reduced, run.best_at_check = halve, run.best_loss.clone()
    run.ups.zero_()


def _single_run(model: nn.Module, x: Tensor, start: Tensor, goal: _Goal, ball: _Ball, steps: int, rho: float,
                early_stop: bool) -> _Run:
    """``steps`` APGD iterations from ``start`` (one forward each, and a backward for all but the last)."""
    run = _Run.begin(model, x, start, goal, ball.unit, ball.norm)
    marks = checkpoints(steps)
    lengths = {b: b - a for a, b in zip([0, *marks], marks, strict=False)}  # w_j -> w_j - w_{j-1}
    everyone = torch.arange(len(x), device=x.device)
    for k in range(1, steps + 1):
        check_stop()
        live = torch.nonzero(~run.fooled).flatten() if early_stop else everyone
        if len(live) == 0:
            break
        _advance(model, run, goal, live, 1.0 if k == 1 else ALPHA, k < steps)
        if k in lengths:
            _checkpoint(run, lengths[k], rho)
    return run


# --- restarts, targets and the eps sweep -----------------------------------------------------------


def start_point(x: Tensor, unit: float, noise: SampleNoise | None, norm: Norm = "linf") -> Tensor:
    """x plus noise scaled onto the surface of the eps-ball, clipped to [0, 1]; x without noise.

    As AutoAttack's code does: linf, uniform noise over its sup norm; l2, Gaussian noise over its L2 norm
    (a uniform point on the sphere).
    """
    if noise is None:
        return x.clone()
    if norm == "l2":
        z, _ = noise.normal_like(x)
        return (x + unit * z / l2_norms(z).clamp_min(torch.finfo(z.dtype).tiny)).clamp(0.0, 1.0)
    u = noise.uniform_like(x)
    top = u.abs().flatten(1).amax(1).view((len(x),) + (1,) * (x.dim() - 1))
    return (x + unit * u / top).clamp(0.0, 1.0)


def run_noise(noise: SampleNoise, restart: int, target: int | None = None) -> SampleNoise:
    """The per-sample streams of one restart (of one target class, for apgd_t): independent of every other."""
    own = noise if target is None else noise.child(f"target{target}")
    return own.child(f"restart{restart}")


def _best_of_runs(model: nn.Module, x: Tensor, ball: _Ball, runs: Sequence[tuple[_Goal, SampleNoise | None]],
                  steps: int, rho: float, early_stop: bool) -> Tensor:
    """Each run on the samples no earlier run fooled; per sample the first success, else the highest loss.

    Across apgd_t's targets that is the highest DLR-T, whose values compare: each is a margin over
    the same kind of logit spread.
    """
    out, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    best_loss = torch.full((len(x),), float("-inf"), device=x.device)
    for goal, noise in runs:
        rows = torch.nonzero(~fooled).flatten()
        if len(rows) == 0:
            break
        start = start_point(x[rows], ball.unit, (None if noise is None else noise.rows(rows)), ball.norm)
        run = _single_run(model, x[rows], start, goal.rows(rows), ball, steps, rho, early_stop)
        take = run.fooled | (best_loss[rows] == float("-inf")) | rose(run.best_loss, best_loss[rows])
        out[rows[take]], best_loss[rows[take]] = run.result()[take], run.best_loss[take]
        fooled[rows[take]] = run.fooled[take]
    return out


def _sweep(model: nn.Module, x: Tensor, eps: Sequence[float], runs: Sequence[tuple[_Goal, SampleNoise | None]],
           config: ApgdConfig | ApgdTConfig, early_stop: bool) -> Iterator[tuple[float, Tensor]]:
    """Every eps (in ``config.norm``'s units) from x on its own; eps 0 gives x itself (configs hold >= 1 step)."""
    for e in eps:
        if e == 0:
            yield e, x.clone()
            continue
        with attack_mode(model):
            ball = _Ball(in_pixels(e, config.norm), config.norm)
            out = _best_of_runs(model, x, ball, runs, config.steps, config.rho, early_stop)
        yield e, out


def apgd(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: ApgdConfig,
    rng: SampleNoise | torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Auto-PGD (Croce & Hein 2020, Algorithm 1): x [N, C, H, W] in [0, 1], eps in 1/255 units.

    With ``norm: l2``, the paper's L2 version: eps is the L2 norm in [0, 1] pixels (no /255).
    Up the cross-entropy or DLR loss of ``labels.true``, ``config.steps`` iterations per restart.
    Each sample keeps its first misclassified iterate, else its point of highest loss, over all
    restarts. Raises RobenchError for the DLR loss on fewer than 3 classes.
    """
    noise = sample_noise(rng, len(x))
    goal = _Goal(config.loss, labels.true)
    runs = [(goal, run_noise(noise, r) if config.random_start else None) for r in range(config.restarts)]
    yield from _sweep(model, x, eps, runs, config, early_stop)


def _targets(model: nn.Module, x: Tensor, labels: Labels, logits: Tensor, config: ApgdTConfig) -> Tensor:
    """[N, T] apgd_t's target classes in the order they run, by ``config.target_select``."""
    if config.target_select == "malt":
        return malt_targets(model, x, labels.true, logits, config.targets)
    return ranked_targets(logits, labels.true, config.targets)


def apgd_t(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: ApgdTConfig,
    rng: SampleNoise | torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Targeted Auto-PGD on DLR-T (Croce & Hein 2020, Section 4), L-infinity, eps in 1/255 units.

    With ``norm: l2``, the L2 version: eps is the L2 norm in [0, 1] pixels (no /255).
    One APGD run per target class, the ``config.targets`` most likely classes other than the
    true one by the clean logits (``labels.logits``, else one forward), at most classes - 1, each on
    the samples still not misclassified. Raises RobenchError with fewer than 4 classes: DLR-T
    divides by the largest logit minus the mean of the 3rd and 4th largest.
    """
    noise = sample_noise(rng, len(x))
    logits = clean_logits(model, x, labels)
    _need_classes(logits, 4, "apgd_t (the targeted DLR loss)")
    ranked = _targets(model, x, labels, logits, config)
    runs = [(_Goal("dlr-t", labels.true, ranked[:, t]), run_noise(noise, r, t) if config.random_start else None)
            for t in range(ranked.shape[1]) for r in range(config.restarts)]
    yield from _sweep(model, x, eps, runs, config, early_stop)
