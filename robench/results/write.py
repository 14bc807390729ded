"""Result rows -> json/csv/md results files with their provenance, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from robench.core.files import atomic_write, atomic_write_text
from robench.core.outputs import check_output, check_per_sample, meta_path
from robench.core.parquet import PARQUET, write_parquet
from robench.core.text import csv_frame, md_code, md_text, to_markdown


def _clean(value: Any) -> Any:
    """NaN and pandas' NA become None (JSON null); numpy scalars become Python ones."""
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-ready dicts (NaN becomes null)."""
    return [{str(k): _clean(v) for k, v in r.items()} for r in rows.to_dict("records")]


def provenance_lines(meta: dict[str, Any]) -> list[str]:
    """Plain-text provenance of a results document: versions, dataset, each model's weights hash, row semantics.

    The one wording for every document robench writes about a run (results Markdown, reports).
    """
    ds = meta.get("dataset") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items() if k != "robench")
    lines = [f"robench {meta.get('robench', '?')} (schema {meta.get('schema_version')})"
             + (f"; {versions}" if versions else ""),
             f"dataset: {ds.get('spec', ds.get('name', '?'))} ({ds.get('split', '?')} split), n = {ds.get('n', '?')}, "
             f"ids sha256 {ds.get('ids_sha256', '?')}"
             + (f", content sha256 {ds['content_sha256']}" if ds.get("content_sha256") else "")]
    lines += [f"model {m.get('label')}: {m.get('spec')}, weights sha256 {m.get('weights_sha256')}"
              for m in meta.get("models") or []]
    if meta.get("semantics"):
        lines.append(f"attack rows: {meta['semantics']}")
    return lines


def _markdown_header(meta: dict[str, Any]) -> str:
    lines = [f"# robench {meta['command']}", "", *(f"- {md_text(line)}" for line in provenance_lines(meta)),
             f"- config: {md_code(json.dumps(meta['config'], sort_keys=True))}", ""]
    return "\n".join(lines) + "\n"


def results_doc(meta: dict[str, Any], rows: pd.DataFrame, samples: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON results document: provenance, rows and (when given) packed per-sample outcomes.

    ``robench eval --rules`` gates this in memory; ``write_results`` writes the same document.
    """
    return {**meta, "rows": records(rows), **({"samples": samples} if samples else {})}


def write_results(path: Path, meta: dict[str, Any], rows: pd.DataFrame,
                  samples: dict[str, Any] | None = None) -> list[Path]:
    """Write rows with their provenance in the format the suffix names; returns files written.

    ``.json`` holds everything, including the packed per-sample outcomes (``samples``) that
    gates use for paired tests; ``.csv`` holds the rows with the provenance beside it in
    ``<file>.meta.json``; ``.md`` holds a provenance header and the table.
    """
    check_output(path, regular=True)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_text(path, json.dumps(results_doc(meta, rows, samples), indent=2, allow_nan=False) + "\n")
        return [path]
    if suffix == ".md":
        atomic_write_text(path, _markdown_header(meta) + to_markdown(rows))
        return [path]
    side = meta_path(path)
    atomic_write_text(side, json.dumps(meta, indent=2, allow_nan=False) + "\n")
    atomic_write(path, lambda p: csv_frame(rows).to_csv(p, index=False))
    return [path, side]


def without_ids(meta: dict[str, Any]) -> dict[str, Any]:
    """The provenance less ``dataset.ids``: the id column holds them, and ``ids_sha256`` still checks them.

    Kept, 50,000 ImageNet ids would make a Parquet footer of megabytes, read with every schema.
    """
    dataset = {k: v for k, v in (meta.get("dataset") or {}).items() if k != "ids"}
    return {**meta, "dataset": dataset} if "dataset" in meta else meta


PER_SAMPLE_CATEGORIES = ("model", "attack", "source", "target")  # ids that repeat on every row of a setting


def write_per_sample(path: Path, frame: pd.DataFrame, meta: dict[str, Any] | None = None) -> None:
    """Per-sample outcomes, atomically, in the format the suffix names: ``.parquet`` or CSV (``-`` too).

    Parquet is typed (ints, bools, floats; model and attack ids dictionary-encoded) and keeps
    ``meta``, the run's provenance (less the ids: ``without_ids``), in its key-value metadata,
    so a 50,000-sample table is one compact file that carries what it was measured on. Text
    is kept exactly: no spreadsheet runs a Parquet cell. In CSV, text cells a spreadsheet
    would run get a ``'`` (``csv_text``).
    """
    check_per_sample(path)
    if path.suffix.lower() == PARQUET:
        write_parquet(path, frame, PER_SAMPLE_CATEGORIES, None if meta is None else without_ids(meta), "per_sample")
        return
    atomic_write(path, lambda p: csv_frame(frame).to_csv(p, index=False))
