"""Results files robench wrote, read back: the one reader for gates, baselines and reports.

A results file is ``.json`` as written by ``--out`` (rows, provenance and packed per-sample
outcomes), or ``.csv`` beside its ``.meta.json`` (rows and provenance only). A file without a
compatible ``schema_version`` is bad input (RobenchError): numbers of another schema could mean
something else. Schema 1 eval and leak-check files read as schema 2 (their rows did not change);
schema 1 transfer files are refused, since their ``transfer_rate`` meant another thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robench import samples
from robench.errors import RobenchError
from robench.files import read_text
from robench.provenance import READABLE_VERSIONS

KEY_COLUMNS = ("model", "source", "target", "attack", "eps")


def load_results(path: str | Path, role: str = "results") -> dict[str, Any]:
    """A results file as a validated document: .json as written by --out, or .csv beside its .meta.json."""
    path = Path(path)
    doc = _load_csv(path, role) if path.suffix.lower() == ".csv" else _read_json(path, role)
    validate(doc, str(path))
    return doc


def results_json(path: str | Path, role: str = "results") -> tuple[dict[str, Any], str]:
    """A results file as a validated document and as the JSON text a copy of it should hold.

    A .json file keeps its own text (per-sample outcomes and all), read once; a .csv becomes
    its document dumped, without per-sample outcomes since a .csv has none.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        doc = load_results(path, role)
        return doc, json.dumps(doc, indent=2, allow_nan=False) + "\n"
    text = read_text(path, role)
    doc = _parse_json(text, path)
    validate(doc, str(path))
    return doc, text


def _read_json(path: Path, role: str) -> Any:
    return _parse_json(read_text(path, role), path)


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RobenchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                           f"give a file written by 'robench eval --out FILE.json'") from None

def _load_csv(path: Path, role: str) -> dict[str, Any]:
    from robench.report import records

    side = path.with_name(path.name + ".meta.json")
    if not path.is_file():
        raise RobenchError(f"{role} file not found: {path}")
    if not side.is_file():
        raise RobenchError(f"{path}: its provenance file {side} is missing (--out FILE.csv writes both)")
    meta = _read_json(side, role)
    try:
        rows = records(pd.read_csv(path))
    except (ValueError, OSError) as e:
        raise RobenchError(f"cannot read {role} file {path} as CSV: {e}") from None
    return {**meta, "rows": rows} if isinstance(meta, dict) else meta


def validate(doc: Any, name: str) -> None:
    """Refuse anything but a robench results document of this robench's schema version."""
    if not isinstance(doc, dict):
        raise RobenchError(f"{name}: not a robench results file (a JSON object with 'schema_version' and 'rows')")
    version = doc.get("schema_version")
    if version is None:
        raise RobenchError(f"{name}: no 'schema_version'; not a robench results file, or one older than schema "
                           f"versions; re-run the evaluation with --out FILE.json")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise RobenchError(f"{name}: schema_version {version!r}, but this robench reads schema_version "
                           f"{' and '.join(map(str, READABLE_VERSIONS))}; re-run the evaluation with this robench "
                           f"(for a baseline: robench baseline update NEW.json {name})")
    if version == 1 and doc.get("command") == "transfer-matrix":
        raise RobenchError(f"{name}: a schema_version 1 transfer-matrix file, whose transfer_rate required the "
                           f"target to be right when clean (now transfer_rate_both_clean; schema 2's transfer_rate is "
                           f"the paper's); re-run transfer-matrix with this robench")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise RobenchError(f"{name}: 'rows' must be a non-empty list of result rows")


def row_key(row: dict[str, Any]) -> tuple:
    """A row's identity: its key columns present, in KEY_COLUMNS order (as in the samples records)."""
    return tuple(row[c] for c in KEY_COLUMNS if c in row)


def row_label(row: dict[str, Any]) -> str:
    """"effnet-base fgsm eps 8" (or "a -> b fgsm eps 8" for transfer rows) for reports."""
    parts = [str(row["model"])] if "model" in row else []
    if "source" in row and "target" in row:
        parts.append(f"{row['source']} -> {row['target']}")
    if "attack" in row:
        parts.append(str(row["attack"]))
    if row.get("eps") is not None and row.get("attack") != "clean":
        parts.append(f"eps {float(row['eps']):g}")
    return " ".join(parts)


def per_sample(doc: dict[str, Any], metric: str) -> dict[tuple, np.ndarray]:
    """{row key: per-sample correctness under ``metric`` (top1, top5)}; empty when the file has none."""
    has_ids = isinstance(doc.get("dataset"), dict) and "ids" in doc["dataset"]
    return samples.read(doc, f"{metric}_correct") if has_ids else {}
