"""Per-sample outcomes, the engine's only product: ``Outcomes`` per (source, target) pair, a run's ``Matrix``.

Also the one definition of top-1 correctness (``correct``), the prediction a NaN/inf row records
(``NONFINITE``, set by ``predictions``), and the order of the settings axis (``settings_of``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from robench.attacks.suite import CLEAN, Suite
from robench.engine.passes import Passes

NONFINITE = -2  # the prediction recorded for NaN/inf logits: never a label, so never counted correct


Array = TypeVar("Array", np.ndarray, Tensor)  # numpy arrays, or tensors (training counts on the device)


def correct(pred: Array, labels: Array) -> Array:
    """Top-1 correctness, the one definition: the prediction is the label (pred [..., N], labels [N])."""
    return pred == labels


@dataclass
class Outcomes:
    """Per-sample outcomes of one (source, target) pair: setting s, sample i -> prediction and top-5 hit.

    Setting 0 is the target's clean input; setting s > 0 is the source's example for
    ``settings[s]`` as the target scores it. A white-box sweep is the pair (model, model).
    """

    ids: list[str]
    labels: np.ndarray  # [N] int64
    settings: list[tuple[str, float]]  # (attack id, eps); settings[0] is ("clean", 0.0)
    pred: np.ndarray  # [S, N] int32 top-1 prediction (NONFINITE for NaN/inf logits)
    top5: np.ndarray  # [S, N] bool: label among the top 5
    # [N] int32: least-likely class of the source's clean logits; none given: -1 each
    least_likely: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    # [S, N] float32: ||x_adv - x||_inf of the source's example, 1/255 units; none given: 0 each
    linf: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    # [N] int32: the class a targeted run's attacks aimed each sample at (the source's); untargeted: -1 each
    goal: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int32))

    def __post_init__(self) -> None:
        s, n = self.pred.shape
        if not self.least_likely.size:
            self.least_likely = np.full(n, -1, dtype=np.int32)
        if not self.linf.size:
            self.linf = np.zeros((s, n), dtype=np.float32)
        if not self.goal.size:
            self.goal = np.full(n, -1, dtype=np.int32)

    @classmethod
    def empty(cls, ids: list[str], settings: list[tuple[str, float]]) -> Outcomes:
        """Tables for these samples and settings, waiting to be filled (-1: not run yet)."""
        n, s = len(ids), len(settings)
        return cls(ids=ids, labels=np.full(n, -1, dtype=np.int64), settings=settings,
                   pred=np.full((s, n), -1, dtype=np.int32), top5=np.zeros((s, n), dtype=bool))

    def record(self, setting: int, rows: np.ndarray, logits: Tensor, labels: Tensor) -> None:
        """Store top-1 prediction and top-5 hit for these rows; NaN/inf logits count as wrong."""
        self.pred[setting, rows], self.top5[setting, rows] = predictions(logits, labels)

    def part(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """These rows' outcomes, for a resume file or another rank."""
        return {"labels": self.labels[rows], "pred": self.pred[:, rows], "top5": self.top5[:, rows],
                "least_likely": self.least_likely[rows], "linf": self.linf[:, rows], "goal": self.goal[rows]}

    def fill(self, rows: np.ndarray, part: Mapping[str, np.ndarray]) -> None:
        """Take in rows' outcomes made elsewhere (by ``part``; one of an untargeted run may lack ``goal``)."""
        self.labels[rows], self.least_likely[rows] = part["labels"], part["least_likely"]
        self.pred[:, rows], self.top5[:, rows], self.linf[:, rows] = part["pred"], part["top5"], part["linf"]
        if "goal" in part:
            self.goal[rows] = part["goal"]

    def subset(self, rows: np.ndarray) -> Outcomes:
        """Only these rows, in this order (e.g. leaving out images that could not be read)."""
        return Outcomes([self.ids[r] for r in rows], self.labels[rows], self.settings, self.pred[:, rows],
                        self.top5[:, rows], self.least_likely[rows], self.linf[:, rows], self.goal[rows])

    def correct(self) -> np.ndarray:
        """[S, N] top-1 correctness."""
        return correct(self.pred, self.labels)

    def nonfinite(self) -> np.ndarray:
        """[S] how many samples gave NaN or inf logits, per setting."""
        return (self.pred == NONFINITE).sum(1)


Pair = tuple[str, str]  # (source label, target label)


@dataclass
class Matrix:
    """Every (source, target) pair's outcomes of one run, on the same samples and settings."""

    ids: list[str]
    settings: list[tuple[str, float]]
    pairs: dict[Pair, Outcomes]
    crafted: int = 0  # attack calls made (0 when every example came from the cache)
    cost: dict[str, list[int]] = field(default_factory=dict)  # json [source, attack] -> [forward, backward]
    content: list[str] = field(default_factory=list)  # each row's content hash ("" where not read yet)

    def __post_init__(self) -> None:
        if not self.content:
            self.content = [""] * len(self.ids)

    def charge(self, source: str, attack: str, passes: Passes) -> None:
        """Add an attack call's per-sample passes to its (source, attack) cost."""
        cost = self.cost.setdefault(json.dumps([source, attack]), [0, 0])
        cost[0] += passes.forward
        cost[1] += passes.backward

    def costs(self) -> list[dict[str, Any]]:
        """Per (source, attack): forward and backward passes made crafting, summed over samples.

        A pass over a batch of B samples counts B; divide by n for passes per sample.

        Passes, not seconds, go into results files: they are the same on any machine, batch
        size or number of torchrun ranks (a resumed run counts the batches it ran).
        """
        return [{"model": s, "attack": a, "forward_passes": int(c[0]), "backward_passes": int(c[1])}
                for (s, a), c in ((json.loads(k), c) for k, c in self.cost.items())]

    @classmethod
    def empty(cls, ids: list[str], settings: list[tuple[str, float]], pairs: Iterable[Pair]) -> Matrix:
        """Tables for every pair, waiting to be filled."""
        return cls(list(ids), settings, {p: Outcomes.empty(list(ids), settings) for p in pairs})

    @property
    def labels(self) -> np.ndarray:
        """[N] the samples' labels (-1 where not run yet)."""
        return next(iter(self.pairs.values())).labels

    def done(self, rows: np.ndarray) -> np.ndarray:
        """Which of these rows hold outcomes already (a resumed run)."""
        return self.labels[rows] >= 0

    def part(self, rows: np.ndarray) -> dict[str, Any]:
        """These rows' outcomes of every pair, for a resume file or another rank."""
        return {"rows": rows, "crafted": self.crafted, "cost": self.cost,
                "content": [self.content[r] for r in rows.tolist()],
                "pairs": {json.dumps(p): o.part(rows) for p, o in self.pairs.items()}}

    def fill(self, part: Mapping[str, Any], keep: np.ndarray | None = None) -> None:
        """Take in rows' outcomes made elsewhere (by ``part``); only the rows ``keep`` marks, when given."""
        rows = np.asarray(part["rows"], dtype=np.int64)
        keep = np.ones(len(rows), dtype=bool) if keep is None else keep
        for key, values in part["pairs"].items():
            values = {name: v[..., keep] for name, v in values.items()}
            self.pairs[tuple(json.loads(key))].fill(rows[keep], values)
        for r, digest in zip(rows[keep].tolist(), np.asarray(part.get("content") or [""] * len(rows))[keep],
                             strict=True):
            self.content[r] = str(digest)

    def subset(self, rows: np.ndarray) -> Matrix:
        """Only these rows, in this order."""
        return Matrix([self.ids[r] for r in rows], self.settings, {p: o.subset(rows) for p, o in self.pairs.items()},
                      self.crafted, self.cost, [self.content[r] for r in rows])

    def white_box(self) -> dict[str, Outcomes]:
        """Each source's outcomes on its own examples, by model label (what ``robench eval`` reports)."""
        return {s: o for (s, t), o in self.pairs.items() if s == t}

    def correctness(self) -> dict[tuple[str, str, str, float], np.ndarray]:
        """Per-sample top-1 correctness keyed (source, target, attack, eps), for paired tests."""
        return {(s, t, a, float(e)): ok for (s, t), o in self.pairs.items()
                for (a, e), ok in zip(o.settings, o.correct(), strict=True)}

    def nonfinite_lines(self) -> list[str]:
        """One line per model (white-box) or pair (transfer) whose logits were NaN or inf somewhere."""
        lines, clean_told = [], set()
        for (s, t), o in self.pairs.items():
            bad = o.nonfinite()
            if s == t:
                clean_told.add(t)
                if bad.any():
                    where = ", ".join(f"{a} eps {e:g}: {n}" if a != CLEAN else f"clean: {n}"
                                      for (a, e), n in zip(o.settings, bad, strict=True) if n)
                    lines.append(f"model '{t}' gave NaN or inf logits ({where} samples); they count as wrong")
            elif bad[1:].any():
                lines.append(f"model '{t}' gave NaN or inf logits on {int(bad[1:].sum())} adversarial examples "
                             f"from '{s}'; they count as wrong")
        for (_, t), o in self.pairs.items():
            if t not in clean_told and (count := int(o.nonfinite()[0])):
                clean_told.add(t)
                lines.append(f"model '{t}' gave NaN or inf logits on {count} clean samples; they count as wrong")
        return lines


def predictions(logits: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and top-5 hits; a row with NaN or inf logits gets NONFINITE and no hit."""
    k = min(5, logits.shape[1])
    finite = torch.isfinite(logits).all(1)
    hit5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1) & finite
    return torch.where(finite, logits.argmax(1), NONFINITE).cpu().numpy(), hit5.cpu().numpy()


def settings_of(suite: Suite) -> list[tuple[str, float]]:
    """Clean first, then every (attack id, eps) in suite order."""
    return [(CLEAN, 0.0)] + [(a.id, float(e)) for a in suite.attacks for e in a.eps]
