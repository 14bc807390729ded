"""The adversarial-training recipe as plain data: TrainConfig and the attacks training can craft with.

Apart from ``robench.train.loop`` so that the zoo's list of recipes (which every ``zoo:NAME``
spec reads) needs no trainer, and the trainer, the zoo and the CLI share one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from robench.errors import FieldError

TRAIN_ATTACKS = ("none", "step_ll", "fgsm", "bim", "pgd")  # how each crafts: robench.train.loop.crafting
LABELS = ("true", "predicted")
EPS_DISTS = ("folded_normal", "fixed")  # how each adversarial example's eps is drawn


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (recorded in the checkpoint)."""

    arch: str = "test_resnet"
    data: str = "digits"
    input_size: int = 32
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    attack: str = "step_ll"
    label: str = "true"  # fgsm / bim / pgd: craft with true or predicted labels
    adv_fraction: float = 0.5
    lam: float = 0.3
    eps_max: float = 16.0  # 1/255 units
    eps_sigma: float = 8.0  # 1/255 units
    steps: int = 5  # bim / pgd
    limit: int | None = None
    seed: int = 0
    class_order: str = "natural"  # image folders: natural (timm's 1, 2, 10) or lexical (torchvision's 1, 10, 2)
    classes: str | None = None  # a file of class names in index order (over class_order)
    val_fraction: float = 0.1  # a folder without a val/ split: the share held out to measure test accuracy
    eps_dist: str = "folded_normal"  # the paper's |N(0, eps_sigma)| truncated to eps_max, or "fixed": eps_max always

    def validate(self) -> TrainConfig:
        """Raise a FieldError naming the field (the CLI names its option) for any value outside its range.

        Every number must be finite first: inf passes ``> 0`` and NaN fails every comparison, and
        either trains a checkpoint of NaN weights.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise FieldError(f.name, f"{{name}} {value!r} must be a finite number")
        checks = [
            (self.attack in TRAIN_ATTACKS, "attack", f"must be one of {', '.join(TRAIN_ATTACKS)}"),
            (self.label in LABELS, "label", "must be true or predicted"),
            (0 <= self.adv_fraction <= 1, "adv_fraction", "must lie in [0, 1]"),
            (self.lam >= 0, "lam", "must be >= 0"),
            (0 <= self.eps_max <= 255, "eps_max", "must lie in [0, 255] (1/255 units)"),
            (not 0 < self.eps_max < 1, "eps_max", f"is in 1/255 units, i.e. {self.eps_max / 255:.2g} in pixels; for "
                                                  f"{self.eps_max:g} in pixels write {self.eps_max * 255:g}"),
            (self.eps_sigma > 0, "eps_sigma", "must be > 0"),
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (2 <= self.batch_size <= 2**20, "batch_size", "must be a whole number in [2, 1048576] (2**20)"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.lr * self.weight_decay < 1, "weight_decay", f"times lr {self.lr:g} must be below 1 (AdamW shrinks "
                                                              f"the weights by lr * weight_decay every step)"),
            (1 <= self.steps <= 10_000, "steps", "must be a whole number in [1, 10000]"),
            (8 <= self.input_size <= 4096, "input_size", "must be a whole number of pixels in [8, 4096]"),
            (self.limit is None or self.limit >= 1, "limit", "must be a positive number"),
            (0 <= self.seed <= 2**63 - 1, "seed", "must be a whole number in [0, 2**63 - 1]"),
            (0 <= self.val_fraction < 1, "val_fraction", "must lie in [0, 1)"),
            (self.eps_dist in EPS_DISTS, "eps_dist", f"must be one of {', '.join(EPS_DISTS)}"),
        ]
        for ok, field_name, rule in checks:
            if not ok:
                raise FieldError(field_name, f"{{name}} {getattr(self, field_name)!r} {rule}")
        return self
