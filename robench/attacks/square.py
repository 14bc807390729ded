"""Score-based black-box attacks: the L-inf Square Attack.

Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (Sec. 3, Algorithms 1 and 2). Random
search over the vertices of the L-inf ball with forwards only, never a gradient, so
gradient masking (zero, underflowing or shattered input gradients) does not stop it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.attacks.base import COUNT, UNIT, Labels, SampleNoise, attack_mode, sample_noise, to_unit
from robench.core.fields import check, typed
from robench.core.stop import check_stop

# iterations of the paper's 10000-query schedule after which p halves (official code's p_selection)
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
PAPER_QUERIES = 10000
REDRAWS = 16  # sign draws per iteration; the first that changes the image is tried (official code: until one does)


@dataclass(frozen=True)
class SquareConfig:
    """Square Attack (L-inf, margin loss, untargeted).

    ``queries``: forwards per sample at most, the first (the stripes start) included; at least 1.
    ``p_init``: the share of pixels the first squares change, in (0, 1].
    """

    queries: int = 5000
    p_init: float = 0.8

    def __post_init__(self) -> None:
        check(self, SQUARE_FIELDS)


SQUARE_FIELDS = typed(SquareConfig, queries=COUNT, p_init=UNIT)


def square_share(i: int, queries: int, p_init: float) -> float:
    """The share of pixels p changed at iteration ``i`` (0-based) of a ``queries`` budget.

    p_init halved after each of the paper's checkpoints (iterations 10, 50, 200, 500, 1000,
    2000, 4000, 6000, 8000 of 10000 queries; Sec. 4 and the official code), the budget
    rescaled to 10000: iteration i counts as int(i / queries * 10000).
    """
    it = int(i / queries * PAPER_QUERIES)
    return p_init / 2 ** sum(it > c for c in HALVINGS)


def square_side(p: float, h: int, w: int) -> int:
    """The side of a square covering a share ``p`` of an h x w image: round(sqrt(p h w)) within [1, min(h, w) - 1]."""
    return max(1, min(round(math.sqrt(p * h * w)), min(h, w) - 1))


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """[N] logit of the true class minus the largest other logit: negative once the sample is fooled."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def _signs(u: Tensor, like: Tensor) -> Tensor:
    """-1 where a uniform in [0, 1) is below 1/2, else +1, on ``like``'s device and dtype."""
    return torch.where(u < 0.5, -1.0, 1.0).to(device=like.device, dtype=like.dtype)


def stripes(noise: SampleNoise, x: Tensor) -> Tensor:
    """[N, C, H, W] signs of the start: vertical stripes, one random sign per sample, channel and column (Sec. 3.2)."""
    n, c, h, w = x.shape
    return _signs(noise.uniform(0, c * w).view(n, c, 1, w), x).expand(n, c, h, w).clone()


def square_mask(u: Tensor, side: int, h: int, w: int, device: torch.device) -> Tensor:
    """[N, 1, H, W] one side x side square per sample, its corner uniform in {0..h-side} x {0..w-side} from u[:, 0:2].

    Every position as in the paper's Algorithm 2 (the official code never draws the last row and column).
    """
    top = (u[:, 0] * (h - side + 1)).floor().long().to(device)[:, None]
    left = (u[:, 1] * (w - side + 1)).floor().long().to(device)[:, None]
    rows, cols = torch.arange(h, device=device)[None], torch.arange(w, device=device)[None]
    in_rows = (rows >= top) & (rows < top + side)
    in_cols = (cols >= left) & (cols < left + side)
    return in_rows[:, None, :, None] & in_cols[:, None, None, :]


def _first_change(signs: Tensor, mask: Tensor, movable: Tensor, draws: Tensor) -> Tensor:
    """[N, C] the first of the [N, R, C] sign draws that changes the image inside the square (the first if none does).

    The official code redraws until the square changes something, so no query is spent on
    the current image; ``movable`` ([N, C, H, W]) is where x + eps and x - eps differ after clipping.
    """
    inside = mask & movable
    can_up = (inside & (signs < 0)).flatten(2).any(2)[:, None]  # [N, 1, C]: a +1 changes that channel
    can_down = (inside & (signs > 0)).flatten(2).any(2)[:, None]
    changes = torch.where(draws > 0, can_up, can_down).any(2)  # [N, R]
    pick = changes.to(torch.uint8).argmax(1)  # first True; 0 when none
    return draws[torch.arange(len(draws), device=draws.device), pick]


def propose(signs: Tensor, movable: Tensor, u: Tensor, side: int) -> Tensor:
    """[N, C, H, W] candidate signs: one random square per sample set to a random sign per channel (Algorithm 2).

    ``u``: [N, 2 + REDRAWS * C] uniforms in [0, 1), the square's corner then the sign draws.
    """
    n, c, h, w = signs.shape
    mask = square_mask(u, side, h, w, signs.device)
    draws = _signs(u[:, 2:].reshape(n, REDRAWS, c), signs)
    chosen = _first_change(signs, mask, movable, draws)
    return torch.where(mask, chosen[:, :, None, None], signs)


def _perturb(x: Tensor, signs: Tensor, e: float) -> Tensor:
    """x + e * signs clipped to [0, 1]: a vertex of the eps-ball (e in [0, 1] units), up to the box."""
    return (x + e * signs).clamp(0.0, 1.0)


def _margin_at(model: nn.Module, x: Tensor, signs: Tensor, e: float, y: Tensor) -> Tensor:
    """One query: the margin of x perturbed by e * signs."""
    with torch.no_grad():
        return margin(model(_perturb(x, signs, e)), y)


def square_search(
    model: nn.Module, x: Tensor, y: Tensor, e: float, config: SquareConfig, noise: SampleNoise
) -> tuple[Tensor, Tensor]:
    """The L-inf Square Attack at e ([0, 1] units) on x [N, C, H, W]: (x_adv, queries per sample [N] int64).

    Only the samples not yet fooled (margin > 0, as in the official code) are queried; a
    candidate replaces a sample's current point when it lowers the margin.
    """
    signs = stripes(noise.child("init"), x)
    best = _margin_at(model, x, signs, e, y)
    spent = torch.ones(len(x), dtype=torch.int64, device=x.device)
    movable = _perturb(x, torch.ones_like(x), e) != _perturb(x, -torch.ones_like(x), e)
    draw, (h, w) = noise.child("square"), x.shape[2:]
    for i in range(config.queries - 1):
        check_stop()
        live = torch.nonzero(best > 0).flatten()
        if len(live) == 0:
            break
        side = square_side(square_share(i, config.queries, config.p_init), h, w)
        u = draw.uniform(i, 2 + REDRAWS * x.shape[1])[live.cpu()]
        cand = propose(signs[live], movable[live], u, side)
        m = _margin_at(model, x[live], cand, e, y[live])
        spent[live] += 1
        better = m < best[live]
        signs[live[better]], best[live[better]] = cand[better], m[better]
    return _perturb(x, signs, e), spent


def square(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: SquareConfig,
    rng: SampleNoise | torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """L-inf Square Attack with the margin loss of the true labels; eps in 1/255 units, x [N, C, H, W] in [0, 1].

    A score-based black box: forwards only, no backward pass. Every eps is its own run from
    x with the same per-sample random numbers. A sample stops once fooled, as in the paper,
    so ``early_stop`` changes nothing. Raises ValueError if ``rng`` holds seeds for another batch size.
    """
    noise = sample_noise(rng, len(x))
    for e in eps:
        if e == 0:
            yield e, x.clone()
            continue
        with attack_mode(model):
            x_adv, _ = square_search(model, x, labels.true, to_unit(e), config, noise)
        yield e, x_adv
