"""Per-sample correctness inside JSON result files, packed to a bit per sample.

A gate judging a drop between two result files needs to know which samples flipped,
not only the two accuracies; one bit per sample per row keeps that affordable at
ImageNet scale (50,000 images: 6.25 kB per row). Bits follow the order of the file's
``dataset.ids``. Each record carries the same key columns as its row.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import numpy as np

from robench.errors import RobenchError

if TYPE_CHECKING:
    from robench.engine import Outcomes

ENCODING = "packbits-base64"  # numpy.packbits (big-endian bit order) then base64


def pack(correct: np.ndarray) -> str:
    """Boolean array -> base64 text of its packed bits."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack(text: str, n: int) -> np.ndarray:
    """Base64 text of packed bits -> boolean array of length n."""
    try:
        raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except ValueError:
        raise RobenchError("a per-sample record is not valid base64; the results file is damaged") from None
    if len(raw) != (n + 7) // 8:
        raise RobenchError(f"a per-sample record holds {len(raw) * 8} bits for {n} samples; the file is damaged")
    return np.unpackbits(raw, count=n).astype(bool)


def record(key: dict[str, Any], top1: np.ndarray, top5: np.ndarray | None = None) -> dict[str, Any]:
    """One JSON record: the row's key columns and its packed top-1 (and top-5) correctness."""
    out = {**key, "top1_correct": pack(top1)}
    if top5 is not None:
        out["top5_correct"] = pack(top5)
    return out


def section(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``samples`` section of a results file."""
    return {"encoding": ENCODING, "records": records}


def from_outcomes(outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    """The ``samples`` section for per-model outcomes: one record per (model, attack, eps)."""
    return section([
        record({"model": m, "attack": a, "eps": e}, o.pred[s] == o.labels, o.top5[s])
        for m, o in outcomes.items() for s, (a, e) in enumerate(o.settings)
    ])


def read(doc: dict[str, Any], metric: str = "top1_correct") -> dict[tuple, np.ndarray]:
    """Per-sample arrays from a loaded results file, keyed by each record's key values in order.

    The key is the tuple of the record's non-bit fields (e.g. (model, attack, eps)).
    An empty dict means the file carries no per-sample outcomes.
    """
    part = doc.get("samples")
    if not part:
        return {}
    if part.get("encoding") != ENCODING:
        raise RobenchError(f"unknown per-sample encoding {part.get('encoding')!r}; expected {ENCODING}")
    n = len(doc["dataset"]["ids"])
    out = {}
    for rec in part["records"]:
        key = tuple(v for k, v in rec.items() if not k.endswith("_correct"))
        if metric in rec:
            out[key] = unpack(rec[metric], n)
    return out
