"""An ensemble source: several models attacked as one, [0, 1] pixels in, their combined logits out.

Liu et al. (ICLR 2017, "Delving into transferable adversarial examples", sec. 3) craft on an
ensemble so that an example that fools several models at once transfers better to a model
held out of it; Dong et al. (CVPR 2018, MI-FGSM, sec. 3.2, eq. 6) fuse the members' logits,
l(x) = sum_k w_k l_k(x) with w_k = 1/K here, since logits keep what softmax would flatten.
``Ensemble`` is one ``nn.Module``, so every attack runs on it unchanged and pays one forward
and one backward per member per step. Liu et al.'s other fusion, the mean of the members'
losses, cannot be one output for every loss (cross-entropy, DLR, margins), so ``loss`` is for
the attacks whose loss is the one cross-entropy of ``robench.attacks.base.loss_gradient``,
which reads the members' logits through ``loss_members``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.core.fields import Rule, check
from robench.data import InputConfig, to_channels

ENSEMBLE_BY = ("logits", "probs", "loss")  # what the members' outputs are averaged as (``Ensemble``)


def by_problem(by: object) -> str | None:
    """What an ensemble mode breaks: logits, probs or loss."""
    return None if by in ENSEMBLE_BY else "be logits, probs or loss"


def members_problem(members: object) -> str | None:
    """What one ensemble's members break: two or more model labels (text), each once."""
    if not isinstance(members, tuple) or not all(isinstance(m, str) for m in members):
        return "hold tuples of model labels (text), e.g. ('a', 'b')"
    if len(members) < 2:
        return "join two or more model labels with '+', e.g. a+b"
    twice = next((m for m in members if members.count(m) > 1), None)
    return None if twice is None else f"name each model once ('{twice}' is there twice)"


def ensembles_problem(ensembles: object) -> str | None:
    """What a tuple of ensembles breaks: each as ``members_problem`` asks, and no ensemble twice (in any order)."""
    if not isinstance(ensembles, tuple):
        return "be a tuple of ensembles, each a tuple of model labels"
    seen: dict[frozenset[str], str] = {}
    for members in ensembles:
        problem = members_problem(members)
        if problem is not None:
            return problem
        label, key = "+".join(members), frozenset(members)
        if key in seen:
            return f"give each ensemble once ('{label}' repeats '{seen[key]}')"
        seen[key] = label
    return None


def say_ensembles(ensembles: object) -> str:
    """Ensembles as the user wrote them: 'a+b', 'a+c' (or their repr, when they are not tuples of text)."""
    try:
        return ", ".join(repr("+".join(m)) for m in ensembles)  # type: ignore[attr-defined]
    except TypeError:
        return repr(ensembles)


ENSEMBLE_FIELDS = {  # robench.core.fields
    "members": Rule(tuple, "a tuple of model labels", test=members_problem,
                    show=lambda m: say_ensembles((m,))),
    "by": Rule(str, "logits, probs or loss", test=by_problem),
}


@dataclass(frozen=True)
class EnsembleSpec:
    """Which models an ensemble source averages (their labels, in order) and how."""

    members: tuple[str, ...]
    by: str = "logits"

    def __post_init__(self) -> None:
        check(self, ENSEMBLE_FIELDS)

    @property
    def label(self) -> str:
        """The source's label in tables and results: the members joined by '+' ("a+b+c")."""
        return "+".join(self.members)

    def describe(self) -> dict[str, object]:
        """Plain-data form for result files."""
        return {"label": self.label, "members": list(self.members), "by": self.by}


def ensemble_input(inputs: Sequence[InputConfig]) -> InputConfig:
    """The input an ensemble reads: its members' with the most values (C x H x W), the first of equals.

    Every member then gets the pixels resized down (or its channels converted), never up from
    fewer values than it takes.
    """
    return max(inputs, key=lambda c: c.channels * c.size[0] * c.size[1])  # max keeps the first of equals


class Ensemble(nn.Module):
    """[0, 1] pixels [B, C, H, W] in, [B, classes] logits out: the members' outputs averaged.

    ``members`` each take [0, 1] pixels of their ``inputs`` (channels, size) and apply their own
    mean/std (``Normalized``). A member of another size or channel count gets the ensemble's pixels
    resized as transfer delivers a perturbation (bilinear, antialiased) and converted as images are
    (``to_channels``), inside the forward, so gradients flow through it. ``by``: ``logits`` returns
    their mean; ``probs`` the log of their mean softmax, so its softmax is the mean of theirs;
    ``loss`` returns the mean logits too (what its predictions and early stopping read), and sets
    ``loss_members`` (x -> [K, B, classes] member logits) so that the cross-entropy attacks average
    the members' losses instead (``robench.attacks.base.loss_gradient``).
    Raises ValueError for another ``by``, or members and inputs of different counts.
    """

    def __init__(self, members: Sequence[nn.Module], inputs: Sequence[InputConfig], by: str = "logits") -> None:
        super().__init__()
        if len(members) != len(inputs):
            raise ValueError(f"{len(members)} members but {len(inputs)} input configs")
        problem = by_problem(by)
        if problem is not None:
            raise ValueError(f"by must {problem}, got {by!r}")
        self.members = nn.ModuleList(members)
        self.shapes = [(c.channels, c.size) for c in inputs]
        self.by = by
        self.loss_members = self.member_logits if by == "loss" else None

    def member_logits(self, x: Tensor) -> Tensor:
        """[K, B, classes]: each member's logits of the ensemble's pixels ``x`` [B, C, H, W] in [0, 1]."""
        return torch.stack([m(self.fit(x, k)) for k, m in enumerate(self.members)])

    def forward(self, x: Tensor) -> Tensor:
        outs = self.member_logits(x)
        if self.by in ("logits", "loss"):
            return outs.mean(0)
        return torch.logsumexp(F.log_softmax(outs, dim=-1), dim=0) - math.log(len(self.members))

    def fit(self, x: Tensor, k: int) -> Tensor:
        """The ensemble's pixels as member ``k`` takes them: its channels, its size."""
        channels, size = self.shapes[k]
        x = to_channels(x, channels)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x
