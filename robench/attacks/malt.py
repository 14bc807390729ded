"""MALT target selection (Melamed, Yehudai & Shamir, "MALT Powers Up Adversarial Attacks", 2024).

AutoAttack's APGD-T aims at the 9 classes with the largest clean logits. MALT ("mesoscopic
almost linearity targeting") ranks them instead by how far the class's decision boundary would
be if the model were linear around x: the logit gap z_y - z_t over the dual (L1) norm of its
input gradient, the L-infinity distance a linear model needs to swap y and t. The class a small
step reaches comes first, so a few targets find what AutoAttack's nine do, for a third of the passes.
The ranking only reorders AutoAttack's own nine candidates: a suite keeping its first k runs a
subset of AutoAttack's targets, and a sample only a dropped target fools is missed (the suite's
``semantics`` says so).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robench.attacks.base import attack_mode, ranked_targets

POOL = 9  # the candidates MALT reorders: AutoAttack's APGD-T targets, the 9 most likely wrong classes


def malt_passes(classes: int) -> int:
    """Passes per sample MALT's ranking costs: one forward and one backward per candidate class."""
    return 1 + min(POOL, classes - 1)


def linear_distance(model: nn.Module, x: Tensor, true: Tensor, candidates: Tensor) -> Tensor:
    """[N, K]: per candidate class, (z_y - z_t) / ||d(z_t - z_y)/dx||_1 at x; inf where the gradient is zero.

    The estimated L-infinity distance to the y/t boundary of the model linearized at x. A zero
    gradient (a masked model) gives no estimate: inf, so the logit order decides among those.
    """
    with attack_mode(model), torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        z_y = logits.gather(1, true[:, None])[:, 0]
        out = torch.full(candidates.shape, float("inf"), device=x.device)
        for k in range(candidates.shape[1]):
            gap = logits.gather(1, candidates[:, k : k + 1])[:, 0] - z_y
            if not gap.requires_grad:
                continue
            last = k == candidates.shape[1] - 1
            grad = torch.autograd.grad(gap.sum(), xg, retain_graph=not last, allow_unused=True)[0]
            if grad is None:
                continue
            norm = grad.detach().flatten(1).abs().sum(1).float()
            dist = (-gap.detach().float()).clamp_min(0) / norm
            out[:, k] = torch.where(norm > 0, dist, torch.full_like(dist, float("inf")))
    return out


def malt_targets(model: nn.Module, x: Tensor, true: Tensor, logits: Tensor, count: int) -> Tensor:
    """[N, min(count, classes - 1)]: of the POOL most likely wrong classes, those MALT's estimate puts nearest.

    Nearest first; ties (and samples without a gradient) keep the logit order, AutoAttack's.
    """
    candidates = ranked_targets(logits, true, POOL)
    order = linear_distance(model, x, true, candidates).argsort(dim=1, stable=True)
    return candidates.gather(1, order)[:, : min(count, candidates.shape[1])]
