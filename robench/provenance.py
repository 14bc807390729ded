"""What every result file records: versions, dataset and its ids, schema version."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any

from robench import __version__
from robench.data import Source, ids_sha256

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of robench and of the libraries that shape its numbers."""
    import numpy
    import timm
    import torch

    return {
        "robench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "numpy": numpy.__version__,
    }


def dataset_record(source: Source, spec: str, split: str, ids: list[str] | None = None) -> dict[str, Any]:
    """Name, split, size, id hash and the ordered sample ids (``ids``: those evaluated, if not all)."""
    ids = list(source.ids) if ids is None else ids
    return {
        "name": source.name, "spec": spec, "split": split, "n": len(ids),
        "num_classes": source.num_classes, "ids_sha256": ids_sha256(ids), "ids": ids,
    }


def envelope(command: str, config: dict[str, Any], dataset: dict[str, Any], models: list[dict[str, Any]],
             metrics: dict[str, str]) -> dict[str, Any]:
    """The header shared by every robench result file (rows are added by the writer)."""
    return {
        "robench": __version__, "schema_version": SCHEMA_VERSION, "command": command, "config": config,
        "versions": versions(), "dataset": dataset, "models": models, "metrics": metrics,
    }


def plain_config(cfg: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready data: suites described, tuples as lists, paths as strings."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if hasattr(value, "describe"):
            value = value.describe()
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out
