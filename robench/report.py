"""Result DataFrames -> rich tables and json/csv/md files, written atomically (figures: robench.plots)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from robench.errors import RobenchError
from robench.files import STDOUT, atomic_write, atomic_write_text, output_problem, same_output, stream_fd

RESULT_SUFFIXES = (".json", ".csv", ".md")


def check_output(path: Path | None, suffixes: tuple[str, ...] = RESULT_SUFFIXES, option: str = "--out",
                 stdout: bool = False) -> None:
    """Fail before any work if ``path`` has an unknown suffix or cannot take an output (robench.files).

    ``stdout``: ``-`` writes to standard output (where the format does not come from the suffix).
    A ``.csv`` results file's ``.meta.json`` beside it is checked too.
    """
    if path is None:
        return
    if str(path) == STDOUT:
        if stdout:
            return
        raise RobenchError(f"{option} -: the format comes from the file name's suffix ({', '.join(suffixes)}), "
                           "so standard output cannot be one; give a file name")
    if path.suffix.lower() not in suffixes:
        raise RobenchError(f"{option} {path}: unknown format '{path.suffix}'; use one of {', '.join(suffixes)}")
    problem = output_problem(path)
    if problem is not None:
        raise RobenchError(f"{option} {path}{' ' if problem.startswith('is ') else ': '}{problem}")
    side = meta_path(path)
    problem = output_problem(side) if suffixes == RESULT_SUFFIXES and path.suffix.lower() == ".csv" else None
    if problem is not None:  # the provenance goes beside a .csv: found only after the run, it cost the run
        raise RobenchError(f"{option} {path}: its provenance file {side} {problem.split(';')[0]}; "
                           f"remove it or give {option} another name")


def check_distinct(outputs: list[tuple[str, Path | None]]) -> None:
    """Fail before any work when two outputs (option, path) name one file or stream, e.g. --junit - --summary -,
    or --out a.json --out ./a.json."""
    seen: list[tuple[str, Path]] = []
    for option, path in outputs:
        if path is None:
            continue
        for first_option, first in seen:
            if not same_output(first, path):
                continue
            if first_option == option:  # one repeatable option (--out) given the same file twice
                same = f"{option} {first} is given twice" if str(first) == str(path) else \
                    f"{option} {first} and {option} {path} are the same file"
                raise RobenchError(f"{same}; give each output once")
            what = "standard output" if stream_fd(path) is not None else "the same file"
            raise RobenchError(f"{first_option} {first} and {option} {path} both write to {what}; "
                               "give each output its own file")
        seen.append((option, path))


def results_paths(option: str, path: Path | None) -> list[tuple[str, Path | None]]:
    """A results file's (option, path) and, for a ``.csv``, its provenance file beside it."""
    if path is None or path.suffix.lower() != ".csv":
        return [(option, path)]
    return [(option, path), (f"{option} {path}: its provenance file", meta_path(path))]


def check_outputs(outputs: list[tuple[str, Path | None]], inputs: list[tuple[str, Path | None]]) -> None:
    """Fail before any work when an output would overwrite an input, or two outputs name one file or stream.

    Both lists hold (option, path); None paths are left out. "One file" follows symlinks and hard
    links (robench.files.same_output); results_paths adds what a ``.csv`` writes or reads beside it.
    """
    for option, path in outputs:
        for in_option, source in inputs:
            if path is not None and source is not None and same_output(path, source):
                same = "" if str(path) == str(source) else " (the same file)"
                raise RobenchError(f"{option} {path} would overwrite the input {in_option} {source}{same}; "
                                   f"give {option.split()[0]} another file name")
    check_distinct(outputs)


def meta_path(path: Path) -> Path:
    """Where a ``.csv`` results file's provenance goes: ``FILE.csv.meta.json`` beside it."""
    return path.with_name(path.name + ".meta.json")


def _clean(value: Any) -> Any:
    """NaN and pandas' NA become None (JSON null); numpy scalars become Python ones."""
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-ready dicts (NaN becomes null)."""
    return [{k: _clean(v) for k, v in r.items()} for r in rows.to_dict("records")]


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
             f"- config: `{json.dumps(meta['config'], sort_keys=True)}`", ""]
    return "\n".join(lines) + "\n"


def results_doc(meta: dict[str, Any], rows: pd.DataFrame, samples: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON results document: provenance, rows and (when given) packed per-sample outcomes.

    ``robench eval --gate`` gates this in memory; ``write_results`` writes the same document.
    """
    return {**meta, "rows": records(rows), **({"samples": samples} if samples else {})}


def write_results(path: Path, meta: dict[str, Any], rows: pd.DataFrame,
                  samples: dict[str, Any] | None = None) -> list[Path]:
    """Write rows with their provenance in the format the suffix names; returns files written.

    ``.json`` holds everything, including the packed per-sample outcomes (``samples``) that
    gates use for paired tests; ``.csv`` holds the rows with the provenance beside it in
    ``<file>.meta.json``; ``.md`` holds a provenance header and the table.
    """
    check_output(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_text(path, json.dumps(results_doc(meta, rows, samples), indent=2, allow_nan=False) + "\n")
        return [path]
    if suffix == ".md":
        atomic_write_text(path, _markdown_header(meta) + to_markdown(rows))
        return [path]
    side = meta_path(path)
    atomic_write_text(side, json.dumps(meta, indent=2, allow_nan=False) + "\n")
    atomic_write(path, lambda p: rows.to_csv(p, index=False))
    return [path, side]


def write_per_sample(path: Path, frame: pd.DataFrame) -> None:
    """Per-sample outcomes as CSV, atomically."""
    atomic_write(path, lambda p: frame.to_csv(p, index=False))


def pct(v: float) -> str:
    """A share as a percentage with one decimal; blank for NaN."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def eps_label(eps: float) -> str:
    """2.0 -> "2", 0.5 -> "0.5" (1/255 units)."""
    return f"{eps:g}"


def results_table(rows: pd.DataFrame, title: str = "robench eval: top-1 / top-5 accuracy (%)",
                  suite: Any = None) -> Any:
    """A rich table: one line per (model, attack), one column per eps (in 1/255), the worst case last.

    Under a cascade suite an attack row is the accuracy after that stage, and is labelled so.
    """
    from rich.table import Table

    eps_values = sorted(rows.loc[rows["attack"] != "clean", "eps"].unique())
    cascade = bool(getattr(suite, "cascade", False))
    caption = f"rows: {suite.semantics()}" if suite is not None else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("model", style="bold")
    table.add_column("attack")
    table.add_column("clean", justify="right")
    for e in eps_values:
        table.add_column(f"eps {eps_label(e)}/255", justify="right")
    for model, group in rows.groupby("model", sort=False):
        clean = group[group["attack"] == "clean"].iloc[0]
        table.add_row(str(model), "clean", f"{pct(clean.top1)} / {pct(clean.top5)}", *[""] * len(eps_values))
        for attack, g in group[group["attack"] != "clean"].groupby("attack", sort=False):
            by_eps = {r.eps: f"{pct(r.top1)} / {pct(r.top5)}" for r in g.itertuples()}
            label = _attack_label(str(attack), cascade)
            table.add_row("", label, "", *[by_eps.get(e, "") for e in eps_values],
                          style="bold" if attack == "worst" else None)
        table.add_section()
    return table


def _attack_label(attack: str, cascade: bool) -> str:
    if attack == "worst":
        return "worst case (robust accuracy)"
    return f"after {attack}" if cascade else attack


def transfer_tables(rows: pd.DataFrame) -> list[Any]:
    """One rich table per (attack, eps): sources as rows, targets as columns, transfer rate (target top-1)."""
    from rich.table import Table

    adv = rows[rows["attack"] != "clean"]
    targets = list(dict.fromkeys(adv["target"]))
    tables = []
    for (attack, eps), group in adv.groupby(["attack", "eps"], sort=False):
        title = f"{attack} eps {eps_label(eps)}/255: transfer rate % (target top-1 %), n source-fooled"
        table = Table(title=title, title_justify="left")
        table.add_column("source \\ target", style="bold")
        for t in targets:
            table.add_column(str(t), justify="right")
        for source, g in group.groupby("source", sort=False):
            cells = {r.target: f"{pct(r.transfer_rate) or '-'} ({pct(r.target_top1)}) "
                               f"n={cell_text('n_fooled_source', getattr(r, 'n_fooled_source', None)) or '-'}"
                     if r.source != r.target else f"white-box ({pct(r.target_top1)})" for r in g.itertuples()}
            table.add_row(str(source), *[cells.get(t, "") for t in targets])
        tables.append(table)
    return tables


def transfer_summary(rows: pd.DataFrame) -> Any:
    """The mean off-diagonal (paper's) transfer rate per attack (columns) and eps (rows): the README's summary table."""
    from rich.table import Table

    cells = rows[(rows["attack"] != "clean") & (rows["source"] != rows["target"])]
    means = cells.groupby(["eps", "attack"], sort=False)["transfer_rate"].mean()
    attacks = list(dict.fromkeys(cells["attack"]))
    caption = "off-diagonal cells, the paper's definition"
    table = Table(title="mean transfer rate %", title_justify="left", caption=caption, caption_justify="left",
                  min_width=len(caption) + 2)  # rich wraps a title and caption to the table's width
    table.add_column("eps", justify="right", style="bold")
    for attack in attacks:
        table.add_column(str(attack), justify="right")
    for eps in sorted(cells["eps"].unique()):
        table.add_row(f"{eps_label(eps)}/255", *[pct(means.get((eps, a), float("nan"))) or "-" for a in attacks])
    return table


VERDICT_STYLE = {"LEAK": "bold red", "OK": "bold green", "INCONCLUSIVE": "bold yellow"}


def _gap(value: float, low: float, high: float, significant: bool) -> str:
    """A gap in points with its interval, starred when significant."""
    star = " *" if significant else ""
    return f"{100 * value:+.1f} \\[{100 * low:+.1f}, {100 * high:+.1f}]{star}"


def leak_table(rows: pd.DataFrame) -> Any:
    """A rich table: one line per (model, eps), accuracies in %, gaps in points, the verdict highlighted."""
    from rich.table import Table

    table = Table(title="robench leak-check: top-1 (%) and gaps (points, \\[interval], * significant)",
                  title_justify="left")
    for name in ("model", "eps", "clean", "fgsm true", "fgsm pred", "step_ll", "leak_gap", "adv - clean", "verdict"):
        table.add_column(name, justify="left" if name in ("model", "verdict") else "right")
    for model, group in rows.groupby("model", sort=False):
        for i, r in enumerate(group.itertuples()):
            verdict = f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]" if i == 0 else ""
            table.add_row(
                str(model) if i == 0 else "", f"{eps_label(r.eps)}/255", pct(r.clean_top1), pct(r.fgsm_true_top1),
                pct(r.fgsm_predicted_top1), pct(r.step_ll_top1),
                _gap(r.leak_gap, r.leak_gap_low, r.leak_gap_high, r.leak_gap_significant),
                _gap(r.adv_minus_clean, r.adv_minus_clean_low, r.adv_minus_clean_high, r.adv_minus_clean_significant),
                verdict,
            )
        table.add_section()
    return table
