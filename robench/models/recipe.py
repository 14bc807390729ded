"""The adversarial-training recipe as plain data: TrainConfig and the attacks training can craft with.

Apart from ``robench.train.loop`` so that the zoo's list of recipes (which every ``zoo:NAME``
spec reads) needs no trainer, and the trainer, the zoo and the CLI share one definition.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from robench.core.fields import VALUE_FIRST, Rule, check
from robench.errors import FieldError

TRAIN_ATTACKS = ("none", "step_ll", "fgsm", "bim", "pgd")  # how each crafts: robench.train.loop.crafting
LABELS = ("true", "predicted")
EPS_DISTS = ("folded_normal", "fixed")  # how each adversarial example's eps is drawn


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (recorded in the checkpoint)."""

    arch: str = "test_resnet"
    data: str = "digits"
    image_size: int = 32  # the side of the square training image in pixels (train --image-size)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    train_attack: str = "step_ll"  # train --train-attack
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

    def __post_init__(self) -> None:
        """Raise a FieldError naming the field (the CLI names its option) for any value outside its range.

        Every number must be finite first: inf passes ``> 0`` and NaN fails every comparison, and
        either trains a checkpoint of NaN weights.
        """
        check(self, TRAIN_FIELDS, VALUE_FIRST)
        if 0 < self.eps_max < 1:  # the unit trap: 0.031 is a pixel fraction, and here 0.031/255
            raise FieldError("eps_max", f"{{name}} {self.eps_max!r} is in 1/255 units, i.e. {self.eps_max / 255:.2g} "
                                        f"in pixels; for {self.eps_max:g} in pixels write {self.eps_max * 255:g}")
        if self.lr * self.weight_decay >= 1:
            raise FieldError("weight_decay", f"{{name}} {self.weight_decay!r} times lr {self.lr:g} must be below 1 "
                                             f"(AdamW shrinks the weights by lr * weight_decay every step)")

    def validate(self) -> TrainConfig:
        """The config itself: its fields were checked when it was built (kept for callers that chain it)."""
        return self


def _share(text: str, high_open: bool = False) -> Rule:
    return Rule(float, "a number", low=0, high=1, high_open=high_open, finite=True, must=f"lie in {text}")


TRAIN_FIELDS = {  # robench.core.fields; the kinds first, then finite, then in this order the ranges
    "arch": Rule(str, "text"),
    "data": Rule(str, "text"),
    "train_attack": Rule(str, "text", choices=TRAIN_ATTACKS),
    "label": Rule(str, "text", choices=LABELS, must="be true or predicted"),
    "adv_fraction": _share("[0, 1]"),
    "lam": Rule(float, "a number", low=0, finite=True, must="be >= 0"),
    "eps_max": Rule(float, "a number", low=0, high=255, finite=True, must="lie in [0, 255] (1/255 units)"),
    "eps_sigma": Rule(float, "a number", low=0, low_open=True, finite=True, must="be > 0"),
    "epochs": Rule(int, "a whole number", low=1, high=10_000, must="be a whole number in [1, 10000]"),
    "batch_size": Rule(int, "a whole number", low=2, high=2**20, must="be a whole number in [2, 1048576] (2**20)"),
    "lr": Rule(float, "a number", low=0, low_open=True, finite=True, must="be > 0"),
    "weight_decay": Rule(float, "a number", low=0, finite=True, must="be >= 0"),
    "steps": Rule(int, "a whole number", low=1, high=10_000, must="be a whole number in [1, 10000]"),
    "image_size": Rule(int, "a whole number", low=8, high=4096, must="be a whole number of pixels in [8, 4096]"),
    "limit": Rule(int | None, "a whole number or None", low=1, must="be a positive number"),
    "seed": Rule(int, "a whole number", low=0, high=2**63 - 1, must="be a whole number in [0, 2**63 - 1]"),
    "class_order": Rule(str, "text"),
    "classes": Rule(str | None, "text or None"),
    "val_fraction": _share("[0, 1)", high_open=True),
    "eps_dist": Rule(str, "text", choices=EPS_DISTS),
}


RENAMED = {"input_size": "image_size", "attack": "train_attack"}  # old field -> new, the CLI's names; until 0.x+1
RECORDED = {new: old for old, new in RENAMED.items()}  # a checkpoint's recipe keeps the old keys (the zoo's bytes stay)


def _old_names_kept(cls: type[TrainConfig]) -> None:
    """TrainConfig(input_size=..., attack=...) and cfg.input_size / cfg.attack keep working, with a warning."""
    generated = cls.__init__

    def __init__(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
        for old, new in RENAMED.items():
            if old not in kwargs:
                continue
            if new in kwargs:
                raise FieldError(new, f"{{name}} and its old name {old} are both given; give {{name}} only")
            warnings.warn(f"TrainConfig({old}=...) is deprecated; use {new}=", DeprecationWarning, stacklevel=2)
            kwargs[new] = kwargs.pop(old)
        generated(self, *args, **kwargs)

    __init__.__doc__ = generated.__doc__
    cls.__init__ = __init__  # type: ignore[method-assign]
    for old, new in RENAMED.items():
        setattr(cls, old, _old_attribute(old, new))


def _old_attribute(old: str, new: str) -> property:
    """A read-only alias of ``new`` that warns."""

    def read(cfg: TrainConfig) -> Any:
        warnings.warn(f"TrainConfig.{old} is deprecated; use .{new}", DeprecationWarning, stacklevel=2)
        return getattr(cfg, new)

    return property(read, doc=f"Deprecated: {new}.")


_old_names_kept(TrainConfig)
