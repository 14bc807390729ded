"""Results files robench wrote, read back: the one reader for gates, baselines and reports.

A results file is ``.json`` as written by ``--out`` (rows, provenance and packed per-sample
outcomes), or ``.csv`` beside its ``.meta.json`` (rows and provenance only). A file without a
compatible ``schema_version`` is bad input (RobenchError): numbers of another schema could mean
something else. Schema 1 eval and leak-check files read as schema 2 (their rows did not change);
schema 1 transfer files are refused, since their ``transfer_rate`` meant another thing.

Every document read is validated against ``results_schema`` (types and ranges of every field a
reader uses), so readers never meet a value they cannot handle; the first bad field is one
RobenchError line naming the file and the field's JSON path. Files come through
``files.read_text`` (regular files only, at most RESULTS_LIMIT bytes); JSON deeper than
MAX_DEPTH, and Infinity anywhere, are refused; NaN reads as null where the schema allows null.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from robench.core.files import RESULTS_LIMIT, read_text
from robench.core.schema_errors import field_path, schema_error, shown
from robench.core.text import csv_text_back
from robench.errors import RobenchError
from robench.results import samples
from robench.results.provenance import READABLE_VERSIONS
from robench.results.schema import ResultsFile, missing_column

KEY_COLUMNS = ("model", "source", "target", "attack", "eps")


FIX = "give a file written by robench (robench schema results prints the schema)"
MAX_DEPTH = 64  # nesting of a results file's JSON: robench writes at most 6 levels


def load_results(path: str | Path, role: str = "results") -> dict[str, Any]:
    """A results file as a validated document: .json as written by --out, or .csv beside its .meta.json."""
    return results_json(path, role, keep_text=False)[0]


def results_json(path: str | Path, role: str = "results", keep_text: bool = True) -> tuple[dict[str, Any], str]:
    """A results file as a validated document and as the JSON text a copy of it should hold.

    A .json file keeps its own text (per-sample outcomes and all), read once, unless it held
    NaN literals (read as null): then, as a .csv, its document dumped, so no copy holds NaN.
    A .csv has no per-sample outcomes.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        doc, dump = _load_csv(path, role), True  # a .csv's document is always dumped
    else:
        text = read_text(path, role, RESULTS_LIMIT)
        doc = _parse_json(text, path)
        dump = bool(validate(doc, str(path)))  # it held NaN literals
    if not keep_text:
        return doc, ""
    return doc, json.dumps(doc, indent=2, allow_nan=False) + "\n" if dump else text


def _read_json(path: Path, role: str) -> Any:
    return _parse_json(read_text(path, role, RESULTS_LIMIT), path)


def _parse_json(text: str, path: Path) -> Any:
    """JSON text as data: NaN stays NaN (null where the schema allows one, refused elsewhere); too deep is refused."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RobenchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                           f"give a file written by 'robench eval --out FILE.json'") from None
    except RecursionError:
        raise RobenchError(f"{path}: JSON nested too deep (robench writes at most {MAX_DEPTH} levels); "
                           f"give a file written by 'robench eval --out FILE.json'") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise RobenchError(f"{path}: not a robench results file ({e}); "
                           f"give a file written by 'robench eval --out FILE.json'") from None


def _load_csv(path: Path, role: str) -> dict[str, Any]:
    from robench.results.write import records

    side = path.with_name(path.name + ".meta.json")
    if not path.is_file():
        raise RobenchError(f"{role} file not found: {path}")
    if not side.is_file():
        raise RobenchError(f"{path}: its provenance file {side} is missing ('robench eval --out FILE.csv' writes both)")
    meta = _read_json(side, role)
    text = read_text(path, role, RESULTS_LIMIT)  # the size and file-kind checks, then pandas parses the text
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={c: str for c in _TEXT_COLUMNS})
        rows = records(frame.apply(lambda col: col.map(csv_text_back) if col.name in _TEXT_COLUMNS else col))
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise RobenchError(f"cannot read {role} file {path} as CSV: {' '.join(str(e).split())}") from None
    _check(meta, str(side))
    doc = {**meta, "rows": rows}
    validate(doc, f"{path} (with {side.name})")
    return doc


_TEXT_COLUMNS = ("model", "source", "target", "attack", "verdict")  # labels such as "18" stay strings


def validate(doc: Any, name: str) -> list[tuple[Any, Any]]:
    """Refuse anything but a robench results document of a readable schema version, naming the first bad field.

    Every field a reader uses is checked against ``results_schema.ResultsFile`` (types,
    ranges, finiteness); NaN where ``null`` is allowed becomes None in ``doc``. Returns the
    places NaN was found (empty for a strict file). Raises RobenchError, one line.
    """
    nans = _check(doc, name)
    try:
        ResultsFile.model_validate(doc)
    except ValidationError as e:
        raise schema_error(name, e, FIX) from None
    gap = missing_column(doc)
    if gap is not None:
        raise RobenchError(f"{name}: field rows[{gap[0]}].{gap[1]}: missing, and every {doc.get('command') or 'eval'} "
                           f"row has it; {FIX}")
    _check_bits(doc, name)
    for parent, key in nans:
        parent[key] = None
    return nans


def _check(doc: Any, name: str, limit_rows: bool = False) -> list[tuple[Any, Any]]:
    """The version checks, then the nesting depth and infinities anywhere (also in fields the schema leaves open)."""
    if not isinstance(doc, dict):
        raise RobenchError(f"{name}: not a robench results file (a JSON object with 'schema_version' and 'rows')")
    version = doc.get("schema_version")
    if version is None:
        raise RobenchError(f"{name}: no 'schema_version'; not a robench results file, or one older than schema "
                           f"versions; re-run the evaluation with 'robench eval --out FILE.json'")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise RobenchError(f"{name}: schema_version {shown(version)}, but this robench reads schema_version "
                           f"{' and '.join(map(str, READABLE_VERSIONS))}; re-run the evaluation with this robench "
                           f"(for a baseline: robench baseline update NEW.json {name})")
    if version == 1 and doc.get("command") == "transfer-matrix":
        raise RobenchError(f"{name}: a schema_version 1 transfer-matrix file, whose transfer_rate required the "
                           f"target to be right when clean (now transfer_rate_both_clean; schema 2's transfer_rate is "
                           f"the paper's); re-run transfer-matrix with this robench")
    return _walk(doc, name)


def _walk(doc: Any, name: str) -> list[tuple[Any, Any]]:
    """(container, key) of every NaN; refuses infinities and nesting deeper than MAX_DEPTH, naming the field."""
    nans: list[tuple[Any, Any]] = []
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(doc, (), 0)]  # (node, its path, its depth)
    while stack:
        node, loc, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RobenchError(f"{name}: field {field_path(loc)}: nested too deep (more than {MAX_DEPTH} levels); "
                               f"give a file written by robench")
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, float) and not math.isfinite(value):
                if math.isinf(value):
                    raise RobenchError(f"{name}: field {field_path((*loc, key))}: expected a finite number, got "
                                       f"{shown(value)}; give a file written by robench")
                nans.append((node, key))
            elif isinstance(value, (dict, list)):
                stack.append((value, (*loc, key), depth + 1))
    return nans


def _check_bits(doc: dict[str, Any], name: str) -> None:
    """Each per-sample record's bits: base64 of exactly one bit per ``dataset.ids`` entry."""
    part, ids = doc.get("samples"), (doc.get("dataset") or {}).get("ids")
    if not part or ids is None:
        return
    for i, rec in enumerate(part["records"]):
        for metric in ("top1_correct", "top5_correct"):
            if rec.get(metric) is None:
                continue
            try:
                samples.unpack(rec[metric], len(ids))
            except RobenchError as e:
                raise RobenchError(f"{name}: field samples.records[{i}].{metric}: {e}") from None


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
