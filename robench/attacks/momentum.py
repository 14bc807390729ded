"""The transfer attack family: MI-, NI-, DI-, TI- and VMI-FGSM, one loop with switches, and their combinations.

Transfer papers build each attack on MI-FGSM's loop and combine them freely (DI-TI-MI, VMI-DI-TI, ...).
So one loop, ``momentum_fgsm``, runs every member; each config switches on the parts its paper adds:

- momentum (Dong et al., CVPR 2018, eq. 6): g = decay * g + grad / mean|grad| (per sample: the paper's
  L1 normalisation, scaled by the pixel count, which leaves the sign and NI's look-ahead as the authors' code);
- Nesterov look-ahead (Lin et al., ICLR 2020, eq. 7): the gradient at x + step * decay * g (not clipped);
- input diversity (Xie et al., CVPR 2019): the gradient through a random resize-and-pad (``transforms.diverse``);
- translation invariance (Dong et al., CVPR 2019, eq. 8): the direction convolved with a Gaussian kernel;
- variance tuning (Wang & He, CVPR 2021, eq. 6-7): the gradient plus v, the mean gradient of ``samples``
  uniform neighbours within beta * eps minus the gradient, from the step before.

Each step is x + step_size * sign(g), projected onto the eps-ball and [0, 1] (L-infinity only, as the
papers). Defaults are the transfer papers' setting: 10 steps of eps / 10. eps is in 1/255 units.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from robench.attacks import transforms
from robench.attacks.base import (
    COUNT,
    LINF_ONLY,
    MAX_COUNT,
    POSITIVE,
    AimKind,
    Labels,
    Norm,
    SampleNoise,
    aim,
    attack_mode,
    in_pixels,
    loss_gradient,
    project,
    sample_noise,
)
from robench.core.fields import Rule, check, typed
from robench.core.stop import check_stop


@dataclass(frozen=True)
class TransferConfig:
    """The family's switches; each member's config is this with its paper's defaults.

    ``step_size`` (1/255 units; None: eps / steps), ``decay`` (momentum mu; 0: none), ``nesterov`` (NI's
    look-ahead), ``diversity`` (DI's probability per gradient; 0: off) and ``resize`` (DI's canvas over
    the image side), ``kernel`` (TI's Gaussian side in pixels, odd; 1: off; ``auto``: 15 at 299 px scaled
    to the image, see ``transforms.kernel_side``), ``samples`` (VMI's neighbours N; 0: off) and ``beta``
    (their radius in eps). ``label``: the class whose loss the attack climbs (``true``, ``predicted``), or
    ``target``: each sample's target class (``Labels.goal``), whose loss every part of the loop descends.
    """

    label: AimKind = "true"
    steps: int = 10
    step_size: float | None = None
    decay: float = 1.0
    nesterov: bool = False
    diversity: float = 0.0
    resize: float = transforms.DI_RESIZE
    kernel: int | Literal["auto"] = 1
    samples: int = 0
    beta: float = 1.5
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        check(self, TRANSFER_FIELDS)


def _odd_side(value: int | str) -> str | None:
    if value == "auto" or (isinstance(value, int) and 1 <= value <= 1001 and value % 2 == 1):
        return None
    return "be an odd number of pixels in [1, 1001], or auto"


TRANSFER_FIELDS = typed(
    TransferConfig, steps=COUNT, step_size=POSITIVE, decay=Rule(low=0, finite=True),
    diversity=Rule(low=0, high=1, finite=True), resize=Rule(low=1, high=4, finite=True),
    kernel=Rule(test=_odd_side), samples=Rule(low=0, high=MAX_COUNT, finite=True), beta=POSITIVE, norm=LINF_ONLY,
)


@dataclass(frozen=True)
class MiFgsmConfig(TransferConfig):
    """MI-FGSM (Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018): decay 1.0, 10 steps."""


@dataclass(frozen=True)
class NiFgsmConfig(TransferConfig):
    """NI-FGSM (Lin et al., "Nesterov Accelerated Gradient and Scale Invariance ...", ICLR 2020): MI with look-ahead."""

    nesterov: bool = True


@dataclass(frozen=True)
class DiFgsmConfig(TransferConfig):
    """DI-2-FGSM (Xie et al., "Improving Transferability ... with Input Diversity", CVPR 2019): probability 0.5.

    No momentum (the paper's DI-2-FGSM); ``decay: 1.0`` makes it M-DI-2-FGSM.
    """

    decay: float = 0.0
    diversity: float = 0.5


@dataclass(frozen=True)
class TiFgsmConfig(TransferConfig):
    """TI-FGSM, iterative (Dong et al., "Evading Defenses ... by Translation-Invariant Attacks", CVPR 2019).

    A Gaussian kernel, 15 x 15 on the paper's 299 px images, scaled to the image (``auto``); no momentum
    (``decay: 1.0`` makes it TI-MI-FGSM).
    """

    decay: float = 0.0
    kernel: int | Literal["auto"] = "auto"


@dataclass(frozen=True)
class VmiFgsmConfig(TransferConfig):
    """VMI-FGSM (Wang & He, "Enhancing the Transferability ... through Variance Tuning", CVPR 2021): N 20, beta 1.5."""

    samples: int = 20


def momentum_fgsm(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: TransferConfig,
    rng: SampleNoise | torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """The family's loop (module docstring) at every eps (1/255 units), each eps from x with its own step size.

    DI's draws and VMI's neighbours come from each sample's own stream (``rng``), the same streams for
    every eps, so a batch gives what its samples give one by one. With ``early_stop`` a sample stops at
    its first misclassified iterate and keeps it; with DI or NI on, where the gradient's forward is not
    at the iterate, that check is one more forward per step.

    ``label: target`` (a targeted run) takes each sample's goal with sign -1 (``base.aim``): momentum, the
    look-ahead, DI, TI and VMI then all work on the descent of the goal's loss, as targeted MI-FGSM
    (Dong et al. 2018, Sec. 3.3) and the targeted transfer papers run them; early stopping still stops
    at misclassification.
    """
    target, sign = aim(labels, config.label)
    noise = sample_noise(rng, len(x))
    for e in eps:
        if e == 0:
            yield e, x.clone()
            continue
        step = config.step_size if config.step_size is not None else e / config.steps
        walk = _Walk(x, target, sign, in_pixels(e, "linf"), in_pixels(step, "linf"), config, noise)
        with attack_mode(model):
            x_adv = walk.run(model, labels.true if early_stop else None)
        yield e, x_adv


class _Walk:
    """One eps's iterates, momentum and variance for a batch, and the step that updates a subset of rows."""

    def __init__(self, x: Tensor, target: Tensor, sign: float, eps: float, alpha: float,
                 config: TransferConfig, noise: SampleNoise) -> None:
        self.x, self.target, self.sign, self.eps, self.alpha, self.config = x, target, sign, eps, alpha, config
        self.x_adv, self.g, self.v = x.clone(), torch.zeros_like(x), torch.zeros_like(x)
        self.kernel = transforms.gaussian_kernel(transforms.kernel_side(config.kernel, *x.shape[-2:]))
        self.views = [noise.child(f"di{k}") for k in range(config.samples + 1)]  # the gradient's, each neighbour's
        self.neighbours = noise.child("vmi")

    def run(self, model: nn.Module, stop_on: Tensor | None) -> Tensor:
        """``steps`` steps on every sample (those still correct, with ``stop_on``); the last iterates [N, C, H, W]."""
        rows = torch.arange(len(self.x), device=self.x.device)
        for t in range(self.config.steps):
            check_stop()
            rows = self.step(model, t, rows, stop_on)
            if len(rows) == 0:
                break
        return self.x_adv

    def step(self, model: nn.Module, t: int, rows: Tensor, stop_on: Tensor | None) -> Tensor:
        """Step ``t`` on ``rows``; returns the rows still in play (those not fooled before the step)."""
        cfg = self.config
        lookahead = cfg.nesterov or cfg.diversity > 0  # the gradient's forward is not at the iterate
        if stop_on is not None and lookahead:
            with torch.no_grad():
                rows = rows[model(self.x_adv[rows]).argmax(1) == stop_on[rows]]
            if len(rows) == 0:
                return rows
        x_t, g = self.x_adv[rows], self.g[rows]
        point = x_t + self.alpha * cfg.decay * g if cfg.nesterov else x_t
        grad, logits = self.gradient(model, point, rows, t, 0)
        if stop_on is not None and not lookahead:
            keep = logits.argmax(1) == stop_on[rows]
            rows, x_t, g, point, grad = rows[keep], x_t[keep], g[keep], point[keep], grad[keep]
        direction = transforms.smooth(grad + self.v[rows], self.kernel)
        g = cfg.decay * g + direction / _mean_abs(direction)
        if cfg.samples:
            self.v[rows] = self.variance(model, point, rows, t) - grad
        self.g[rows] = g
        self.x_adv[rows] = project(x_t + self.alpha * g.sign(), self.x[rows], self.eps)
        return rows

    def gradient(self, model: nn.Module, point: Tensor, rows: Tensor, t: int, k: int) -> tuple[Tensor, Tensor]:
        """sign * d(summed CE)/d point, through DI's transform when on (draw set ``k``), and the forward's logits."""
        cfg, view = self.config, None
        if cfg.diversity > 0:
            draws = self.views[k].rows(rows).uniform(t, transforms.DI_DRAWS)
            view = lambda z: transforms.diverse(z, draws, cfg.diversity, cfg.resize)  # noqa: E731
        grad, logits = loss_gradient(model, point, self.target[rows], view)
        return self.sign * grad, logits

    def variance(self, model: nn.Module, point: Tensor, rows: Tensor, t: int) -> Tensor:
        """VMI's mean gradient over ``samples`` neighbours, uniform in the beta * eps cube around ``point``."""
        total = torch.zeros_like(point)
        radius = self.config.beta * self.eps
        for k, r in enumerate(self.neighbours.child(t).rows(rows).uniform_draws(point, self.config.samples)):
            check_stop()  # N gradients a step: a stop request should not wait for all of them
            total += self.gradient(model, point + radius * r, rows, t, k + 1)[0]
        return total / self.config.samples


def _mean_abs(t: Tensor) -> Tensor:
    """[N, 1, 1, 1] each sample's mean |t|, at least the dtype's smallest normal (a zero gradient stays zero)."""
    return t.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)

