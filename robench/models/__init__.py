"""Model specs -> models that take [0, 1] pixels, with their input config and a weights hash.

Modules: ``load`` (spec grammar, wrapper, loading, weights hash), ``checkpoint`` (safetensors metadata),
``factories`` (``FILE.py:CALLABLE`` and ``package.module:CALLABLE``), ``preprocess`` (mean/std/input-size
overrides), ``recipe`` (the training recipe as data), ``zoo`` (robench's own tiny models).

The names below are imported on first use (PEP 562), as in ``robench`` itself: the CLI reads
``robench.models.zoo`` and ``preprocess`` for its help text without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_API = {name: "robench.models.load" for name in (
    "LoadedModel", "ModelSpec", "Normalized", "check_name", "checkpoint_classes", "checkpoint_dataset", "load_model",
    "logits_of", "parse_spec", "training_model", "weights_sha256")}
__all__ = ["LoadedModel", "ModelSpec", "Normalized", "check_name", "checkpoint_classes", "checkpoint_dataset",
           "load_model", "logits_of", "parse_spec", "training_model", "weights_sha256"]

if TYPE_CHECKING:
    from robench.models.load import (
        LoadedModel,
        ModelSpec,
        Normalized,
        check_name,
        checkpoint_classes,
        checkpoint_dataset,
        load_model,
        logits_of,
        parse_spec,
        training_model,
        weights_sha256,
    )


def __getattr__(name: str) -> Any:
    """Import a model-loading name on first use, so ``robench.models.zoo`` stays light."""
    if name not in _API:
        raise AttributeError(f"module 'robench.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
