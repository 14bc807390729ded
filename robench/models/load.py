"""A model spec becomes a ready model: built (timm, factory or checkpoint), loaded, wrapped and probed.

``load_model`` is the one way in for evaluating, ``training_model`` for training; both wrap
with ``robench.models.wrapper``. The grammar of a spec is ``robench.models.spec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robench.core.files import kind_of
from robench.data import InputConfig
from robench.errors import FieldNote, RobenchError
from robench.models import factories
from robench.models.checkpoint import data_config, input_metadata, model_kwargs, read_metadata
from robench.models.hub import _create, _has_hub_weights, check_arch
from robench.models.identity import model_identity
from robench.models.input_config import _factory_config, _input_config, _input_source, _input_text, _timm_config
from robench.models.preprocess import Preprocess
from robench.models.spec import HUB_PREFIXES, ModelSpec
from robench.models.weights import _fit, _load_state, check_not_results, weights_sha256
from robench.models.wrapper import Normalized, _floats, _probe, wrap


@dataclass
class LoadedModel:
    """A ready model and what results need to record about it."""

    spec: ModelSpec
    arch: str  # a timm name or the factory (FILE.py:CALLABLE)
    module: Normalized
    input: InputConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    weights_sha256: str
    identity: dict[str, Any]  # the code that computes it (robench.models.identity): architecture, factory source
    weights: str = "checkpoint"  # "checkpoint", "hub", "factory" (what the user's code made) or "random"
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one line each, for the run's warnings: defaults it chose
    input_from: str = "checkpoint"  # checkpoint, timm_pretrained_cfg, module_pretrained_cfg or identity
    overrides: Preprocess = field(default_factory=Preprocess)  # the options' and the spec's, over input_from

    def function(self) -> list[Any]:
        """What decides the function attacked: its code, weights hash and input config (mean/std may be overridden).

        Resume states and the example cache key on it, so a run with other preprocessing, or another
        forward over the same weights, is another run.
        """
        return [self.identity, self.weights_sha256, input_metadata(self.input, self.mean, self.std)]

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return {
            "label": self.spec.label, "spec": self.spec.text, "arch": self.arch,
            "checkpoint": str(self.spec.checkpoint) if self.spec.checkpoint else None,
            "weights": self.weights, "weights_sha256": self.weights_sha256,
            "identity": self.identity, "num_classes": self.num_classes,
            **input_metadata(self.input, self.mean, self.std), "input_from": self.input_from,
            "input_overrides": self.overrides.describe(),
        }


def load_model(
    spec: ModelSpec, num_classes: int, pretrained: bool = False, device: str | torch.device = "cpu",
    native: tuple[int, int, int] | None = None, preprocess: Preprocess | None = None,
) -> LoadedModel:
    """Build, load and wrap a model; it comes back in eval mode on ``device``.

    num_classes comes from the checkpoint when it says, else from the dataset (a factory that
    does not take ``num_classes`` decides its own). Hub weights are fetched only with
    ``pretrained`` or for a NAME.TAG with no checkpoint. ``native`` is the dataset's own
    (C, H, W), the input of a factory model that does not say what it wants; ``preprocess``
    overrides every model's input config, and the spec's own query overrides that.
    Raises RobenchError for anything that cannot load, or whose forward fails on its input.
    """
    meta = _checkpoint_meta(spec)
    arch = spec.name or meta.get("arch")
    if not arch:
        raise RobenchError(
            f"checkpoint {spec.checkpoint} does not name its architecture; give it as NAME@{spec.checkpoint}"
        )
    if spec.name is None and factories.is_factory(arch):
        raise RobenchError(f"checkpoint {spec.checkpoint} was trained from the factory {arch}; robench never imports "
                           f"code a file names: give the factory yourself, as {arch}@{spec.checkpoint}")
    if spec.name is None and (not isinstance(arch, str) or arch.startswith(HUB_PREFIXES)):
        raise RobenchError(f"checkpoint {spec.checkpoint} names {arch!r} as its architecture; robench fetches nothing "
                           f"a file names: give the architecture yourself, as NAME@{spec.checkpoint}")
    wanted = int(meta.get("num_classes", num_classes))
    overrides = spec.preprocess.over(preprocess or Preprocess())
    if factories.is_factory(arch):
        model, weights = factories.build(arch, wanted), "factory"  # its code may load weights of its own
        defaults, notes = _factory_config(model, native, spec.label, meta, overrides)
    else:
        model, weights = _timm_model(spec, arch, meta, wanted, pretrained, overrides)
        defaults, notes = _timm_config(model), []
    if spec.checkpoint is not None:
        _fit(model, _load_state(spec.checkpoint), spec, arch)
        weights = "checkpoint"
    cfg, more = _input_config(model, overrides.apply(data_config(meta, defaults)), spec.label, overrides)
    model.eval()
    wrapped, input_cfg = wrap(model, cfg)
    wrapped = wrapped.to(device).eval()
    classes, note = _probe(wrapped, input_cfg, spec.label)
    source = _input_source(model, arch, meta)
    if source == "timm_pretrained_cfg" and spec.checkpoint is not None and not overrides:
        more.append(FieldNote(f"model '{spec.label}': its weights carry no input config, so robench uses timm's "
                              f"pretrained_cfg for {arch.partition('.')[0]}: {_input_text(input_cfg, cfg)}; if it "
                              f"was trained otherwise, set {{input_size}}/{{crop_pct}}/{{mean}}/{{std}} (or "
                              f"SPEC?input-size=C,H,W&...)", "input_size", "crop_pct", "mean", "std"))
    return LoadedModel(spec=spec, arch=arch, module=wrapped, input=input_cfg, mean=_floats(cfg["mean"]),
                       std=_floats(cfg["std"]), num_classes=classes, weights_sha256=weights_sha256(model),
                       identity=model_identity(arch, model), weights=weights, meta=meta, notes=notes + more + note,
                       input_from=source, overrides=overrides)


def training_model(arch: str, num_classes: int, native: tuple[int, int, int] | None,
                   size: int) -> tuple[Normalized, InputConfig]:
    """A fresh model to train (a timm name or a factory taking ``num_classes``), wrapped, fed whole images at ``size``.

    Raises RobenchError if a factory's model does not give ``num_classes`` logits.
    """
    if factories.is_factory(arch):
        model = factories.build(arch, num_classes)
        cfg, _ = _factory_config(model, native, arch, {}, Preprocess())
    else:
        import timm

        check_arch(arch)
        model = timm.create_model(arch, num_classes=num_classes)
        cfg = _timm_config(model)
    whole = {**cfg, "input_size": (cfg["input_size"][0], size, size), "crop_pct": 1.0, "crop_mode": "center"}
    cfg, _ = _input_config(model, whole, arch, Preprocess())
    wrapped, input_cfg = wrap(model.eval(), cfg)
    classes, _ = _probe(wrapped, input_cfg, arch)
    if classes != num_classes:
        raise RobenchError(f"model '{arch}' gives {classes} logits but the data has {num_classes} classes; "
                           f"let the factory take num_classes=")
    return wrapped, input_cfg


def check_name(arch: str) -> None:
    """Raise a RobenchError now if ``arch`` (a timm name or a factory) cannot be built."""
    if factories.is_factory(arch):
        factories.find(arch)
    else:
        check_arch(arch)


def _timm_model(spec: ModelSpec, arch: str, meta: dict[str, Any], num_classes: int, pretrained: bool,
                overrides: Preprocess) -> tuple[nn.Module, str]:
    """A timm model (hub, checkpoint or random weights) sized to the checkpoint's head and stem.

    A plain state dict does not say num_classes or in_chans: its classifier and first conv do.
    An input size override with one channel makes a 1-channel model (timm's in_chans=1).
    """
    check_arch(arch)
    hub = spec.checkpoint is None and (pretrained or _has_hub_weights(arch))
    kwargs = model_kwargs(meta, spec.checkpoint) if spec.checkpoint is not None else {}
    if overrides.input_size is not None and overrides.input_size[0] != 3:
        kwargs["in_chans"] = overrides.input_size[0]
    if not hub:
        kwargs["num_classes"] = num_classes
    model = _create(arch, hub, kwargs)
    if spec.checkpoint is not None:
        state = _load_state(spec.checkpoint)
        fitted = {**kwargs, **_head_and_stem(model, state, "num_classes" not in meta)}
        if fitted != kwargs:
            model = _create(arch, False, fitted)
    return model, "hub" if hub else "random"


def _head_and_stem(model: nn.Module, state: dict[str, Tensor], head: bool) -> dict[str, int]:
    """num_classes (if ``head``) and in_chans a plain state dict was trained with, from its weights."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    found = {}
    names = {"num_classes": cfg.get("classifier"), "in_chans": cfg.get("first_conv")} if head else \
        {"in_chans": cfg.get("first_conv")}
    for key, name in names.items():
        name = name[0] if isinstance(name, (tuple, list)) else name
        weight = state.get(f"{name}.weight") if name else None
        if weight is not None and weight.ndim >= 2:
            found[key] = int(weight.shape[0 if key == "num_classes" else 1])
    return found


def _checkpoint_meta(spec: ModelSpec) -> dict[str, Any]:
    """robench metadata of the spec's checkpoint ({} for plain weights)."""
    ckpt = spec.checkpoint
    if ckpt is None:
        return {}
    if not ckpt.is_file():
        kind = kind_of(ckpt)
        raise RobenchError(f"checkpoint {ckpt} is {kind}, not a checkpoint file (model spec '{spec.text}'); give the "
                           f"weights file" if kind else
                           f"checkpoint not found: {ckpt} (model spec '{spec.text}'); check the path")
    meta = read_metadata(ckpt) if ckpt.suffix == ".safetensors" else None
    if meta is None and spec.name is None:
        check_not_results(ckpt)
        raise RobenchError(
            f"{ckpt} carries no robench metadata naming its architecture; give it as NAME@{ckpt}, e.g. resnet18@{ckpt}"
        )
    return meta or {}


def checkpoint_dataset(spec: ModelSpec) -> str | None:
    """The data spec a robench checkpoint says its model trained on (``dataset: "fashion-mnist:train"``), or None."""
    dataset = _checkpoint_meta(spec).get("dataset")
    if not isinstance(dataset, str) or not dataset.endswith(":train"):
        return None
    return dataset.removesuffix(":train") or None


def checkpoint_training_eps(spec: ModelSpec) -> float | None:
    """The largest eps (1/255) a robench checkpoint says its model was adversarially trained at; None if none.

    Reads the recorded recipe (``attack`` and ``eps_max``); plain training (``attack: none``) and
    checkpoints without a recipe give None.
    """
    recipe = _checkpoint_meta(spec).get("recipe")
    if not isinstance(recipe, dict) or recipe.get("attack") in (None, "none"):
        return None
    eps = recipe.get("eps_max")
    return float(eps) if isinstance(eps, int | float) and not isinstance(eps, bool) and 0 < eps <= 255 else None


def checkpoint_classes(spec: ModelSpec) -> list[str] | None:
    """The class names a spec's robench checkpoint records in index order; None when it records none."""
    classes = _checkpoint_meta(spec).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else None
