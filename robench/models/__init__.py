"""Model specs -> models that take [0, 1] pixels, with their input config and a weights hash.

Modules: ``spec`` (the spec grammar), ``wrapper`` ([0, 1] pixels in, logits out), ``load`` (building, loading and
probing a model; a spec's checkpoint metadata), ``input_config`` (where a model's input config comes from),
``weights`` (weights hash, reading and fitting state dicts), ``hub`` (timm names, pretrained weights offline first),
``checkpoint`` (safetensors metadata), ``factories`` (``FILE.py:CALLABLE`` and ``package.module:CALLABLE``),
``preprocess`` (mean/std/input-size overrides), ``recipe`` (the training recipe as data), ``zoo`` (robench's own
tiny models).

The names below are imported on first use (PEP 562), as in ``robench`` itself: the CLI reads
``robench.models.zoo`` and ``preprocess`` for its help text without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_API = {  # public name -> the module that defines it
    "ModelSpec": "robench.models.spec", "parse_spec": "robench.models.spec",
    "Normalized": "robench.models.wrapper", "logits_of": "robench.models.wrapper",
    "LoadedModel": "robench.models.load", "load_model": "robench.models.load", "training_model": "robench.models.load",
    "check_name": "robench.models.load", "checkpoint_classes": "robench.models.load",
    "checkpoint_dataset": "robench.models.load",
    "weights_sha256": "robench.models.weights",
}
__all__ = ["LoadedModel", "ModelSpec", "Normalized", "check_name", "checkpoint_classes", "checkpoint_dataset",
           "load_model", "logits_of", "parse_spec", "training_model", "weights_sha256"]

if TYPE_CHECKING:
    from robench.models.load import (
        LoadedModel,
        check_name,
        checkpoint_classes,
        checkpoint_dataset,
        load_model,
        training_model,
    )
    from robench.models.spec import ModelSpec, parse_spec
    from robench.models.weights import weights_sha256
    from robench.models.wrapper import Normalized, logits_of


def __getattr__(name: str) -> Any:
    """Import a model-loading name on first use, so ``robench.models.zoo`` stays light."""
    if name not in _API:
        raise AttributeError(f"module 'robench.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
