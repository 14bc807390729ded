"""Paired comparisons of two accuracies on the same samples, so a verdict is not noise.

Two settings scored on the same n samples differ only on the discordant ones:
``gained`` (wrong under A, right under B) and ``lost`` (right under A, wrong under B).
The test is McNemar's exact test: under "no difference" each discordant sample is a
fair coin, so ``gained ~ Binomial(gained + lost, 1/2)``. The interval for
acc(B) - acc(A) is Bonett & Price's adjusted Wald interval for paired proportions
(Psychological Methods, 2012), which keeps its coverage with few or no discordant
samples, where a plain Wald interval collapses to a point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from robench.errors import RobenchError


@dataclass(frozen=True)
class PairedDiff:
    """acc(B) - acc(A) on the same samples, with its exact one-sided p-values and interval."""

    n: int
    gained: int  # right under B, wrong under A
    lost: int  # right under A, wrong under B
    diff: float  # (gained - lost) / n
    p_greater: float  # exact McNemar p-value for acc(B) > acc(A)
    p_less: float  # exact McNemar p-value for acc(B) < acc(A)
    low: float  # two-sided interval for diff at the confidence asked for
    high: float


def binom_tail(k: int, d: int) -> float:
    """P(X >= k) for X ~ Binomial(d, 1/2), exactly."""
    if k <= 0:
        return 1.0
    if k > d:
        return 0.0
    from scipy.stats import binom

    return float(binom.sf(k - 1, d, 0.5))


def exact_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval for a share ``k / n``.

    Exact rather than Wald, so it keeps its coverage at shares near 0 or 1, where robust
    accuracies often sit; with no samples it says nothing: (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def interval(gained: int, lost: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Bonett-Price adjusted Wald interval for a paired difference of proportions, clipped to [-1, 1]."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p_gain, p_lose = (gained + 1) / (n + 2), (lost + 1) / (n + 2)
    center = p_gain - p_lose
    half = z * math.sqrt(max(p_gain + p_lose - center**2, 0.0) / (n + 2))
    return max(center - half, -1.0), min(center + half, 1.0)


def paired(a_correct: np.ndarray, b_correct: np.ndarray, confidence: float = 0.95) -> PairedDiff:
    """Compare per-sample correctness under A and under B (boolean arrays over the same samples)."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise RobenchError(f"a paired comparison needs two equal non-empty 1-d arrays (got {a.shape}, {b.shape})")
    gained, lost, n = int((b & ~a).sum()), int((a & ~b).sum()), len(a)
    low, high = interval(gained, lost, n, confidence)
    d = gained + lost
    return PairedDiff(n, gained, lost, (gained - lost) / n, binom_tail(gained, d), binom_tail(lost, d), low, high)


def holm(pvalues: list[float], alpha: float) -> list[bool]:
    """Holm's step-down rejections: family-wise error at most ``alpha`` over all the tests."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    reject = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        reject[i] = True
    return reject
