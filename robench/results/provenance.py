"""What every result file records: versions, dataset and its ids, schema version."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any

from robench import __version__
from robench.data import Source, content_sha256, ids_sha256

SCHEMA_VERSION = 2  # 2: transfer_rate is the paper's (source-prefiltered); 1's is transfer_rate_both_clean
READABLE_VERSIONS = (1, 2)  # eval and leak-check rows are the same in both; schema 1 transfer files are refused


def versions() -> dict[str, str]:
    """Versions of robench and of the libraries that shape its numbers, and torch's thread count.

    The thread count (``--threads`` or torch's default) explains a run's time, and float sums may
    run in another order with another count.
    """
    import numpy
    import timm
    import torch

    return {
        "robench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "numpy": numpy.__version__, "torch_threads": str(torch.get_num_threads()),
    }


RESUME_VERSIONS = ("robench", "torch", "timm")  # a change in any may change an attack's outcome


def resume_versions() -> dict[str, str]:
    """The versions a resumed run must share with the run that wrote its state (``RESUME_VERSIONS``)."""
    found = versions()
    return {name: found[name] for name in RESUME_VERSIONS}


def dataset_record(source: Source, spec: str, split: str, ids: list[str] | None = None,
                   skipped: dict[int, str] | None = None, content: list[str] | None = None) -> dict[str, Any]:
    """Name, split, size, class names in index order, id hash and the ordered sample ids (``ids``: those evaluated).

The class names say what each label index meant, so a reader can tell two numberings of one folder apart.

    ``skipped`` (row -> file) lists the unreadable images left out, so none is dropped silently.
    ``content`` (each evaluated sample's content hash, known once all were read) gives
    ``content_sha256``: ids alone cannot tell two folders of the same file names apart.
    """
    ids = list(source.ids) if ids is None else ids
    record = {
        "name": source.name, "spec": spec, "split": split, "n": len(ids),
        "num_classes": source.num_classes, "classes": list(source.classes), "ids_sha256": ids_sha256(ids),
        "ids": ids,
    }
    if content is not None:
        record["content_sha256"] = content_sha256(content)
    if skipped:
        record["skipped"] = [{"id": source.ids[r], "file": name} for r, name in sorted(skipped.items())]
    return record


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
