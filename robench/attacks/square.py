"""Score-based black-box attacks: the Square Attack, L-inf or L2.

Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (Sec. 3, Algorithms 1, 2 and 3). Random
search with forwards only, never a gradient, so gradient masking (zero, underflowing or
shattered input gradients) does not stop it: over the vertices of the L-inf ball, or (Sec. 3.2)
on the L2 sphere, moving perturbation mass between two square windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robench.attacks.base import (
    COUNT,
    UNIT,
    Labels,
    Norm,
    SampleNoise,
    attack_mode,
    in_pixels,
    l2_norms,
    sample_noise,
)
from robench.core.fields import check, typed
from robench.core.stop import check_stop

# iterations of the paper's 10000-query schedule after which p halves (official code's p_selection)
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
PAPER_QUERIES = 10000
REDRAWS = 16  # sign draws per iteration; the first that changes the image is tried (official code: until one does)


@dataclass(frozen=True)
class SquareConfig:
    """Square Attack (margin loss, untargeted).

    ``queries``: forwards per sample at most, the first (the stripes start) included; at least 1.
    ``p_init``: the share of pixels the first squares change, in (0, 1].
    ``norm``: ``linf`` (eps in 1/255 units) or ``l2`` (eps the L2 norm of the whole perturbation
    in [0, 1] pixels, as RobustBench's 0.5 on CIFAR-10: no /255).
    """

    queries: int = 5000
    p_init: float = 0.8
    norm: Norm = "linf"

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


def bumps(s: int, rows: int | None = None) -> Tensor:
    """[rows, s] the paper's eta^(rows, s) (eq. 7): centred concentric squares of weight 1 / (k + 1)^2, unit L2 norm.

    Cell (i, j) at Chebyshev distance d from the centre (rows // 2, s // 2) holds the sum of
    1 / (k + 1)^2 for k from d to max(rows, s) // 2, as the official code builds it.
    """
    rows = s if rows is None else rows
    if rows == 0:
        return torch.zeros(0, s, dtype=torch.float64)
    top = max(rows, s) // 2 + 1
    i, j = torch.arange(rows)[:, None], torch.arange(s)[None, :]
    dist = torch.maximum((i - rows // 2).abs(), (j - s // 2).abs())
    weights = 1.0 / torch.arange(1, top + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum over k >= d
    eta = tail[dist]
    return eta / eta.norm()


def two_bumps(s: int) -> Tensor:
    """[s, s] the update's shape (Sec. 3.2): eta of the upper half minus eta of the lower half, unit L2 norm."""
    eta = torch.cat([bumps(s, s // 2), -bumps(s, s - s // 2)])
    return eta / eta.norm()


def _shapes(s: int, flip: Tensor) -> Tensor:
    """[N, s, s] two_bumps(s), transposed for the samples whose uniform ``flip`` ([N]) is >= 1/2 (the paper's 50%)."""
    eta = two_bumps(s)
    return torch.where((flip >= 0.5)[:, None, None], eta.T, eta)


def _place(shape: Tensor, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
    """[N, 1, H, W] zeros with each sample's ``shape`` ([N, s, s]) written at (top, left) ([N] each)."""
    n, s = shape.shape[0], shape.shape[1]
    out = torch.zeros(n, 1, h, w, dtype=shape.dtype)
    k = torch.arange(s)
    out[torch.arange(n)[:, None, None], 0, (top[:, None] + k)[:, :, None], (left[:, None] + k)[:, None, :]] = shape
    return out


def l2_start(noise: SampleNoise, x: Tensor, e: float) -> Tensor:
    """The L2 start (Sec. 3.2): a grid of min(H, W) // 5-sided tiles of eta, each a random sign per channel, norm e.

    The tiles are centred; each sample draws, per tile, a transpose and a sign per channel.
    """
    n, c, h, w = x.shape
    s = max(1, min(h, w) // 5)
    across, down = w // s, h // s
    u = noise.uniform(0, across * down * (c + 1)).view(n, across * down, c + 1)
    delta = torch.zeros(n, c, h, w, dtype=torch.float64)
    top0, left0 = (h - down * s) // 2, (w - across * s) // 2
    for t in range(across * down):
        r, q = top0 + (t // across) * s, left0 + (t % across) * s
        signs = torch.where(u[:, t, 1:] < 0.5, -1.0, 1.0).double()[:, :, None, None]
        delta[:, :, r : r + s, q : q + s] += _shapes(s, u[:, t, 0])[:, None] * signs
    delta = delta.to(device=x.device, dtype=x.dtype)
    return (x + e * delta / l2_norms(delta).clamp_min(1e-12)).clamp(0.0, 1.0)


def l2_side(p: float, h: int, w: int) -> int:
    """The side of the L2 update's windows: round(sqrt(p h w)), at least 3, made odd, at most min(h, w)."""
    s = max(round(math.sqrt(p * h * w)), 3)
    return min(s + (s % 2 == 0), h, w)


def l2_propose(x: Tensor, x_best: Tensor, e: float, u: Tensor, side: int) -> Tensor:
    """A candidate by the paper's Algorithm 3: mass of windows W1 and W2 moves into W1 as a new eta, norm kept at e.

    ``u``: [N, 5 + C] uniforms in [0, 1): W1's corner, W2's corner, the transpose, a sign per
    channel. Each channel's new window gets the norm of W1 and W2 together over all channels plus
    an equal share of what the clipped [0, 1] box left unused, and the whole perturbation is then
    rescaled to norm e: the authors' code, which AutoAttack's L2 run uses. A budget per channel
    (each channel only its own windows' norm) was 1-3 points weaker on the digits at 60 queries.
    """
    n, c, h, w = x.shape
    nu = x_best - x
    m1 = square_mask(u[:, 0:2], side, h, w, x.device).to(x.dtype)
    both = torch.maximum(m1, square_mask(u[:, 2:4], side, h, w, x.device).to(x.dtype))
    unused = (e * e - l2_norms(nu) ** 2).clamp_min(0.0)
    top = (u[:, 0] * (h - side + 1)).floor().long()
    left = (u[:, 1] * (w - side + 1)).floor().long()
    eta = _place(_shapes(side, u[:, 4]), top, left, h, w).to(device=x.device, dtype=x.dtype)
    signs = _signs(u[:, 5:], x)[:, :, None, None]
    in_w1 = nu * m1
    temp = signs * eta + in_w1 / _channel_norms(in_w1).clamp_min(1e-12)
    avail = (l2_norms(nu * both) ** 2 + unused / c).sqrt()
    new = nu * (1 - both) + temp / _channel_norms(temp).clamp_min(1e-12) * avail
    new = new * (e / l2_norms(new).clamp_min(1e-12))
    return (x + new).clamp(0.0, 1.0)


def _channel_norms(d: Tensor) -> Tensor:
    """[N, C, 1, 1] the L2 norm of each sample's channel of d."""
    return d.flatten(2).norm(dim=2)[:, :, None, None]


def l2_search(
    model: nn.Module, x: Tensor, y: Tensor, e: float, config: SquareConfig, noise: SampleNoise
) -> tuple[Tensor, Tensor]:
    """The L2 Square Attack at L2 norm e ([0, 1] pixels) on x [N, C, H, W]: (x_adv, queries per sample [N] int64).

    As square_search: the samples not yet fooled are queried; a candidate replaces a sample's
    current point when it lowers the margin.
    """
    x_best = l2_start(noise.child("init"), x, e)
    with torch.no_grad():
        best = margin(model(x_best), y)
    spent = torch.ones(len(x), dtype=torch.int64, device=x.device)
    draw, (h, w) = noise.child("square"), x.shape[2:]
    for i in range(config.queries - 1):
        check_stop()
        live = torch.nonzero(best > 0).flatten()
        if len(live) == 0:
            break
        side = l2_side(square_share(i, config.queries, config.p_init), h, w)
        u = draw.uniform(i, 5 + x.shape[1])[live.cpu()]
        cand = l2_propose(x[live], x_best[live], e, u, side)
        with torch.no_grad():
            m = margin(model(cand), y[live])
        spent[live] += 1
        better = m < best[live]
        x_best[live[better]], best[live[better]] = cand[better], m[better]
    return x_best, spent


def square(
    model: nn.Module,
    x: Tensor,
    labels: Labels,
    eps: Sequence[float],
    config: SquareConfig,
    rng: SampleNoise | torch.Generator | None = None,
    early_stop: bool = False,
) -> Iterator[tuple[float, Tensor]]:
    """Square Attack with the margin loss of the true labels, x [N, C, H, W] in [0, 1].

    eps: in 1/255 units for ``norm: linf``; for ``norm: l2`` the L2 norm of the whole perturbation
    in [0, 1] pixels, taken as given (no /255). A score-based black box: forwards only, no
    backward pass. Every eps is its own run from x with the same per-sample random numbers. A
    sample stops once fooled, as in the paper, so ``early_stop`` changes nothing. Raises
    ValueError if ``rng`` holds seeds for another batch size.
    """
    noise = sample_noise(rng, len(x))
    for e in eps:
        if e == 0:
            yield e, x.clone()
            continue
        with attack_mode(model):
            search = square_search if config.norm == "linf" else l2_search
            x_adv, _ = search(model, x, labels.true, in_pixels(e, config.norm), config, noise)
        yield e, x_adv
