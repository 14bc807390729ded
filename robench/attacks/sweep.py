"""Early-stopped sweeps: every eps of an iterative attack as one batch of (eps, sample) pairs.

With early stopping a sample's run at eps e ends at its first misclassified iterate, and its
runs at every larger eps end then too and take that iterate, which lies inside their balls.
Stacking the eps makes one forward and backward call per step for all of them, so a sweep
costs as many calls as its longest schedule rather than the sum over its eps: on a CPU, the
number of calls is what bounds the time of a small model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.attacks.base import gradient_and_logits, project, to_unit


@dataclass(frozen=True)
class Leg:
    """One eps of a sweep: eps (1/255 units), its signed step ([0, 1] units), its step count, its start."""

    eps: float
    step: float
    steps: int
    start: Tensor  # [N, C, H, W] in [0, 1]


def stacked_descent(model: nn.Module, x: Tensor, target: Tensor, legs: list[Leg], stop_on: Tensor) -> list[Tensor]:
    """Each leg's projected sign-gradient descent from its start, all legs in one batch, with early stopping.

    x: [N, C, H, W]; target, stop_on: [N] (the loss's class, and the true labels that decide
    "fooled"). Returns one [N, C, H, W] tensor per leg, in the order given. A pair stops at its
    first misclassified iterate, which also ends the pairs of the same sample at larger eps.
    """
    n, e = len(x), len(legs)
    pad = (1,) * (x.dim() - 1)
    unit, step = _per_pair([to_unit(g.eps) for g in legs], x), _per_pair([g.step for g in legs], x)
    steps = torch.tensor([g.steps for g in legs]).repeat_interleave(n)
    xs, tgt, stop = x.repeat(e, *pad), target.repeat(e), stop_on.repeat(e)
    x_adv, done = torch.cat([g.start for g in legs]), torch.zeros(e * n, dtype=torch.bool)
    ascending = sorted(range(e), key=lambda k: legs[k].eps)
    for t in range(int(steps.max())):
        live = ((steps > t) & ~done).nonzero().flatten()
        if len(live) == 0:
            break
        index = live.to(x.device)
        g, logits = gradient_and_logits(model, x_adv[index], tgt[index])
        fooled = (logits.argmax(1) != stop[index]).cpu()
        if fooled.any():
            done[live[fooled]] = True
            _hand_on(x_adv, done, ascending, n)
        move = ~fooled & ~done[live]
        rows = index[move.to(x.device)]
        x_adv[rows] = project(x_adv[rows] + step[rows] * g[move.to(x.device)], xs[rows], unit[rows])
    return list(x_adv.view(e, n, *x.shape[1:]).unbind(0))


def _per_pair(values: list[float], x: Tensor) -> Tensor:
    """One value per leg, repeated for each of x's samples: [legs * N, 1, 1, 1]."""
    out = torch.tensor(values, dtype=x.dtype, device=x.device).repeat_interleave(len(x))
    return out.view(-1, *(1,) * (x.dim() - 1))


def _hand_on(x_adv: Tensor, done: Tensor, ascending: list[int], n: int) -> None:
    """Give each sample's first fooling example (smallest eps) to its larger eps that are not fooled yet."""
    held = torch.full((n,), -1, dtype=torch.long)  # the leg whose example fools the sample, by ascending eps
    for k in ascending:
        rows = torch.arange(k * n, (k + 1) * n)
        take = (held >= 0) & ~done[rows]
        if take.any():
            source = held[take] * n + torch.arange(n)[take]
            x_adv[rows[take].to(x_adv.device)] = x_adv[source.to(x_adv.device)]
            done[rows[take]] = True
        held = torch.where((held < 0) & done[rows], k, held)
