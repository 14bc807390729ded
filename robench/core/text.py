"""Cells and labels as text: numbers for tables, Markdown that cannot run or link."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd


def cell_text(column: str, v: Any, digits: int = 4) -> str:
    """One table cell as text: eps in 1/255, counts (n, n_...) as integers, floats with ``digits``, blank if missing."""
    if v is pd.NA or v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if column == "eps":
            return eps_label(v)
        return f"{v:.0f}" if (column == "n" or column.startswith("n_")) and v.is_integer() else f"{v:.{digits}f}"
    return str(v)


_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")  # where Markdown would start raw HTML; "<= 0.02" stays as it is


def md_text(text: str) -> str:
    """Text for a Markdown line or table cell, shown as written: table bars and HTML tags escaped, control
    characters visible (``\\x1b``). Labels come from -m or from another's results file."""
    text = "".join(f"\\x{ord(c):02x}" if not c.isprintable() else c for c in text)
    return _TAG_START.sub("&lt;", text.replace("|", "\\|"))


def to_markdown(rows: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table, written by hand (no tabulate dependency)."""
    head = "| " + " | ".join(rows.columns) + " |"
    rule = "|" + "|".join("---" for _ in rows.columns) + "|"
    body = [
        "| " + " | ".join(md_text(cell_text(c, v, digits)) for c, v in zip(rows.columns, r, strict=True))
        + " |" for r in rows.itertuples(index=False)
    ]
    return "\n".join([head, rule, *body]) + "\n"


def pct(v: float | None) -> str:
    """A share as a percentage with one decimal; blank for NaN."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def eps_label(eps: float) -> str:
    """2.0 -> "2", 0.5 -> "0.5" (1/255 units)."""
    return f"{eps:g}"
