"""Preprocessing overrides: a model's mean, std, input size, interpolation and crop, set by the user.

Kept under timm's data-config keys, so an override replaces exactly what a timm model's
``pretrained_cfg`` (or a robench checkpoint's metadata) would have said. They come from the
``--mean/--std/--input-size/--interpolation/--crop-pct`` options (every model) or from a
spec's query, ``SPEC?mean=0.1307&std=0.3081&input-size=1,28,28`` (one model; it wins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from robench.core.fields import Rule, check
from robench.errors import FieldError

Interpolation = Literal["bilinear", "bicubic", "nearest"]  # what robench's resize and timm's transform both do
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)
SPEC_KEYS = {"mean": "mean", "std": "std", "input-size": "input_size", "interpolation": "interpolation",
             "crop-pct": "crop_pct"}  # the spec query's keys (CLI spelling) -> fields

MAX_SIDE = 4096  # pixels: one 3 x 4096 x 4096 float image is 200 MB


def _per_channel(values: tuple[float, ...]) -> str | None:
    if not values or not all(math.isfinite(v) for v in values):
        return "be one finite number per channel"
    return None


def _positive_per_channel(values: tuple[float, ...]) -> str | None:
    return _per_channel(values) or (None if min(values) > 0 else "be > 0 for every channel")


def _size(size: tuple[int, ...]) -> str | None:  # beyond MAX_SIDE no memory holds a batch
    ok = len(size) == 3 and size[0] in (1, 3) and all(1 <= side <= MAX_SIDE for side in size[1:])
    return None if ok else f"be C,H,W with C 1 or 3 and H, W in [1, {MAX_SIDE}]"


def _list(values: tuple[float, ...]) -> str:
    """Values as the options take them, "0,1" (not a tuple's "(0.0, 1.0)")."""
    return ",".join(f"{v:g}" for v in values)


PREPROCESS_FIELDS = {  # robench.core.fields; None leaves the model's own value
    "mean": Rule(test=_per_channel, show=_list),
    "std": Rule(test=_positive_per_channel, show=_list),
    "input_size": Rule(test=_size, show=lambda size: ",".join(map(str, size))),
    "interpolation": Rule(choices=INTERPOLATIONS),
    "crop_pct": Rule(low=0, high=1, low_open=True, must="lie in (0, 1]", show=str),
}


@dataclass(frozen=True)
class Preprocess:
    """What to impose on a model's input config; None leaves the model's own value."""

    mean: tuple[float, ...] | None = None  # per channel, or one value for every channel
    std: tuple[float, ...] | None = None
    input_size: tuple[int, int, int] | None = None  # C, H, W
    interpolation: str | None = None
    crop_pct: float | None = None  # in (0, 1]: the share of the resized image the center crop keeps

    def __post_init__(self) -> None:
        check(self, PREPROCESS_FIELDS)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def over(self, other: Preprocess) -> Preprocess:
        """These overrides, falling back to ``other``'s where unset (a spec's over the options')."""
        return Preprocess(**{f.name: getattr(other, f.name) if getattr(self, f.name) is None
                             else getattr(self, f.name) for f in fields(self)})

    def apply(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """A timm data config with these overrides in it."""
        return {**cfg, **self.describe()}

    def describe(self) -> dict[str, Any]:
        """The set fields as plain data (lists for tuples): for results files."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_text(cls, **texts: str | None) -> Preprocess:
        """From option or query texts: ``mean="0.5,0.5,0.5"``, ``input_size="1,28,28"``, ``crop_pct="0.875"``."""
        values: dict[str, Any] = {}
        for name, text in texts.items():
            if text is None:
                continue
            if name in ("mean", "std"):
                values[name] = _numbers(name, text, float)
            elif name == "input_size":
                values[name] = _numbers(name, text, int)
            elif name == "crop_pct":
                (values[name], *more) = _numbers(name, text, float)
                if more:
                    raise FieldError(name, f"{{name}} must be one number, got {text!r}")
            else:
                values[name] = text.strip().lower()
        return cls(**values)


def _numbers(name: str, text: str, kind: type) -> tuple[Any, ...]:
    """``"1,28,28"`` -> (1, 28, 28), or a FieldError naming the field."""
    parts = [p.strip() for p in (text.replace("x", ",") if kind is int else text).split(",")]
    try:
        return tuple(kind(p) for p in parts)
    except ValueError:
        what = "whole numbers C,H,W, e.g. 1,28,28" if kind is int else "comma-separated numbers, e.g. 0.5,0.5,0.5"
        raise FieldError(name, f"{{name}} must be {what}, got {text!r}") from None


def split_query(text: str) -> tuple[str, Preprocess]:
    """``SPEC?mean=0.5&std=0.5`` -> (SPEC, its overrides); text without a query comes back whole.

    Only a tail of ``key=value`` pairs is a query, so a path holding a ``?`` stays a path.
    """
    head, mark, query = text.rpartition("?")
    pairs = [p.partition("=") for p in query.split("&")] if mark else []
    if not mark or not head or not all(eq and key for key, eq, _ in pairs):
        return text, Preprocess()
    keys = [key for key, _, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice:
        raise FieldError("models", f"model spec '{text}': '{twice}' is set twice; give each setting once")
    unknown = [key for key in keys if key not in SPEC_KEYS]
    if unknown:
        raise FieldError("models", f"model spec '{text}': unknown setting '{unknown[0]}'; "
                                   f"use {', '.join(SPEC_KEYS)}, e.g. {head}?mean=0.5&std=0.5")
    try:
        return head, Preprocess.from_text(**{SPEC_KEYS[key]: value for key, _, value in pairs})
    except FieldError as e:
        key = next(k for k, v in SPEC_KEYS.items() if v == e.field)
        raise FieldError("models", f"model spec '{text}': {e.named(key)}") from None
