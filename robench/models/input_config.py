"""A model's input config (timm's data-config dict): where it comes from, and what the model's stem takes.

A robench checkpoint records it; otherwise timm's pretrained_cfg for the architecture, a factory
module's own pretrained_cfg, or identity (mean 0, std 1 at the data's size). Overrides come
from ``robench.models.preprocess``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from robench.data import InputConfig
from robench.errors import FieldError, FieldNote, RobenchError
from robench.models import factories
from robench.models.checkpoint import INPUT_KEYS
from robench.models.preprocess import Preprocess
from robench.models.wrapper import _floats


def _input_source(model: nn.Module, arch: str, meta: dict[str, Any]) -> str:
    """Where a model's input config comes from, before any override: its robench checkpoint, a pretrained_cfg
    (timm's for the architecture, or the factory module's own), or identity (a factory module without one)."""
    if any(key in meta for key in INPUT_KEYS):
        return "checkpoint"
    if not factories.is_factory(arch):
        return "timm_pretrained_cfg"
    return "module_pretrained_cfg" if _own_cfg(model) else "identity"


def _input_text(input_cfg: InputConfig, cfg: dict[str, Any]) -> str:
    """"3x160x160 px, crop 0.95, bilinear, mean 0.5,0.5,0.5, std 0.5,0.5,0.5" for messages."""
    numbers = lambda values: ",".join(f"{v:.4g}" for v in _floats(values))  # noqa: E731
    return (f"{input_cfg.channels}x{input_cfg.size[0]}x{input_cfg.size[1]} px, crop {input_cfg.crop_pct:g}, "
            f"{input_cfg.interpolation}, mean {numbers(cfg['mean'])}, std {numbers(cfg['std'])}")


def _timm_config(model: nn.Module) -> dict[str, Any]:
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)


def _factory_config(model: nn.Module, native: tuple[int, int, int] | None, label: str, meta: dict[str, Any],
                    overrides: Preprocess) -> tuple[dict[str, Any], list[str]]:
    """A factory model's input config: its own ``pretrained_cfg`` (timm's convention), else identity.

    Without one robench feeds [0, 1] pixels as they are (mean 0, std 1) at the dataset's own
    size, and says so unless a checkpoint or the user set mean and std.
    """
    from timm.data import resolve_data_config

    own = _own_cfg(model)
    if own:
        if not isinstance(own, Mapping):
            raise RobenchError(f"model '{label}': its pretrained_cfg is a {type(own).__name__}, not a dict "
                               f"of timm data-config keys (input_size, mean, std, interpolation, crop_pct)")
        try:
            cfg = resolve_data_config(pretrained_cfg=dict(own))
            Preprocess(mean=_floats(cfg["mean"]), std=_floats(cfg["std"]), input_size=tuple(cfg["input_size"]),
                       crop_pct=float(cfg["crop_pct"]))
        except (FieldError, TypeError, ValueError, AssertionError) as e:
            reason = e.named("pretrained_cfg." + e.field) if isinstance(e, FieldError) else str(e)
            raise RobenchError(f"model '{label}': bad pretrained_cfg: {reason}") from None
        return cfg, []
    c, h, w = native or (3, 224, 224)
    c = _stem_channels(model) or c
    cfg = {"input_size": (c, h, w), "interpolation": "bilinear", "mean": (0.0,) * c, "std": (1.0,) * c,
           "crop_pct": 1.0, "crop_mode": "center"}
    told = ("mean" in meta and "std" in meta) or (overrides.mean is not None and overrides.std is not None)
    size = "x".join(map(str, overrides.input_size)) if overrides.input_size else f"the data's own size, {c}x{h}x{w}"
    notes: list[str] = [] if told else [FieldNote(
        f"model '{label}' has no pretrained_cfg: robench feeds it [0, 1] pixels unnormalized (mean 0, std 1) at "
        f"{size}; if it expects otherwise, say so with ?mean=..&std=..&input-size=C,H,W or {{mean}}/{{std}}",
        "mean", "std")]
    return cfg, notes


def _own_cfg(model: nn.Module) -> Any:
    """The data config a module carries in timm's convention (``pretrained_cfg``, or the older ``default_cfg``)."""
    return getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)


def _stem_channels(model: nn.Module) -> int | None:
    """The channels a model's first convolution takes: timm's ``first_conv``, else the first Conv2d."""
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("first_conv") if isinstance(cfg, Mapping) else None
    name = name[0] if isinstance(name, (tuple, list)) else name
    if name:
        try:
            channels: Any = model.get_submodule(name).in_channels  # whichever layer timm names: no type to check
            return int(channels)
        except (AttributeError, TypeError):
            pass
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(conv.in_channels) if conv is not None else None


def _input_config(model: nn.Module, cfg: dict[str, Any], label: str,
                  overrides: Preprocess) -> tuple[dict[str, Any], list[str]]:
    """The config with channels the model's stem takes, and one mean/std value per channel.

    timm keeps a 3-channel config for an ``in_chans=1`` model; its 3 means (and stds) then
    become their average, said in a note. One value for 3 channels is repeated, as timm does.
    """
    c, h, w = (int(v) for v in cfg["input_size"])
    stem = _stem_channels(model)
    notes: list[str] = []
    if stem is not None and stem != c:
        if overrides.input_size is not None:
            raise RobenchError(f"model '{label}' takes {stem} channel(s) (its first convolution) but the input size "
                               f"asked has {c}; give input-size {stem},{h},{w}")
        c = stem
    if c not in (1, 3):
        raise RobenchError(f"model '{label}' takes {c} input channels; robench feeds 1 (grayscale) or 3 (RGB), "
                           f"so give a model whose first layer takes one of those")
    mean, std = _floats(cfg["mean"]), _floats(cfg["std"])
    if c == 1 and len(mean) == 3 and len(std) == 3:
        if len(set(mean)) > 1 or len(set(std)) > 1:
            notes.append(FieldNote(f"model '{label}' takes 1 channel; its 3-channel mean and std are averaged to "
                                   f"{sum(mean) / 3:.4g} and {sum(std) / 3:.4g} (set {{mean}}/{{std}} to choose)",
                                   "mean", "std"))
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    mean, std = (mean * c if len(mean) == 1 else mean), (std * c if len(std) == 1 else std)
    if len(mean) != c or len(std) != c:
        raise FieldError("mean", f"model '{label}' takes {c} channel(s) but its mean has {len(mean)} values and its "
                                 f"std {len(std)}; give one per channel (or one for all), e.g. {{name}} "
                                 f"{','.join(['0.5'] * c)} or SPEC?mean={','.join(['0.5'] * c)}")
    return {**cfg, "input_size": (c, h, w), "mean": mean, "std": std}, notes
