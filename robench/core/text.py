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
_INLINE = re.compile(r"[\\`*_\[\]~&|]")  # what starts or ends Markdown's inline syntax: links, images, code, emphasis
_LINE_START = re.compile(r"^(?:[#>=+-](?![\d.])|\d+(?=[.)](?:\s|$)))")  # a heading, quote or list where a line starts


def md_text(text: str) -> str:
    """Text for a Markdown line or table cell, shown as written: Markdown's punctuation and HTML tags escaped,
    control characters visible (``\\x1b``). Labels come from -m, class folders or another's results file:
    ``[click me](https://evil.example)`` must not become a link, nor ``![x](...)`` an image a PR comment fetches."""
    text = _INLINE.sub(lambda m: "\\" + m.group(), text)  # before "\x1b" is written: its backslash is literal
    text = "".join(f"\\x{ord(c):02x}" if not c.isprintable() else c for c in text)
    text = _LINE_START.sub(lambda m: m.group() + "\\" if m.group()[0].isdigit() else "\\" + m.group(), text)
    return _TAG_START.sub("&lt;", text)


def md_code(text: str) -> str:
    """``text`` as a Markdown code span: fenced by more backticks than it holds in a row, so it cannot close early."""
    text = "".join(f"\\x{ord(c):02x}" if not c.isprintable() else c for c in text)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_text(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows and never runs: text beginning ``= + - @``, tab or return gets a ``'``.

    A text cell that begins with ``'`` gets one too, so ``csv_text_back`` returns exactly what was written.
    Numbers stay numbers (-0.5 is a number, not a formula)."""
    return "'" + value if isinstance(value, str) and value.startswith(CSV_FORMULA_START) else value


def csv_text_back(value: Any) -> Any:
    """A cell as ``csv_text`` had it: the one ``'`` it added taken off."""
    return value[1:] if isinstance(value, str) and value.startswith("'") else value


def csv_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with each text cell made safe for a spreadsheet (``csv_text``); number columns untouched."""
    text = [c for c in rows.columns if rows[c].dtype == object or pd.api.types.is_string_dtype(rows[c])]
    return rows.assign(**{str(c): rows[c].map(csv_text) for c in text}) if text else rows


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


def eps_with_unit(eps: float, norm: Any = None) -> str:
    """An eps with its unit, for titles and headers: 8 -> "8/255" (L-inf), 0.5 under l2 -> "0.5 (L2)".

    An L2 eps is the perturbation's L2 norm in [0, 1] pixels: it takes no /255. Any other ``norm``
    (None, a results file older than L2, a clean row's null) is L-inf.
    """
    return f"{eps:g} (L2)" if norm == "l2" else f"{eps:g}/255"
