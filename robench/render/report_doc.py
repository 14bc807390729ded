"""Results files -> one report (Markdown with PNG figures, or HTML with inline SVG): `robench report`.

Every input is read through ``robench.results.read``; eval files on the same data and suite
also merge into one leaderboard, so several runs compare at a glance.
"""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from robench.core.text import cell_text, eps_label, md_code, md_text, pct, to_markdown
from robench.errors import RobenchError
from robench.render import plots
from robench.results.read import load_results
from robench.results.write import provenance_lines

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_SUFFIXES = (".md", ".html")
TITLES = {"eval": "white-box evaluation", "transfer-matrix": "black-box transfer", "leak-check": "label leaking"}


@dataclass(frozen=True)
class Input:
    """One results file given to the report: its name as the user typed it, and its document."""

    name: str
    doc: dict[str, Any]

    @property
    def command(self) -> str:
        return str(self.doc.get("command", "eval"))

    @property
    def rows(self) -> pd.DataFrame:
        return pd.DataFrame(self.doc["rows"])


def load_inputs(paths: list[Path]) -> list[Input]:
    """Read and validate every results file, then refuse eval files that cannot share a leaderboard."""
    seen: dict[str, str] = {}
    for p in paths:  # the same file twice would list every model twice
        key = str(Path(p).resolve())
        if key in seen:
            raise RobenchError(f"{p} is given twice (also as {seen[key]}); give each results file once")
        seen[key] = str(p)
    inputs = [Input(str(p), load_results(p)) for p in paths]
    check_mergeable(inputs)
    return inputs


def _ids(doc: dict[str, Any]) -> str:
    return str((doc.get("dataset") or {}).get("ids_sha256", ""))


def _content(doc: dict[str, Any]) -> str:
    return str((doc.get("dataset") or {}).get("content_sha256") or "")


def suite_label(doc: dict[str, Any]) -> str:
    """"fgsm 4,8; pgd 8" from config.suite: the attacks and eps an eval ran (cascade marked)."""
    suite = (doc.get("config") or {}).get("suite") or {}
    parts = [f"{a.get('id', a.get('name'))} {','.join(eps_label(float(e)) for e in a.get('eps', []))}"
             for a in suite.get("attacks", [])]
    return "; ".join(parts) + (" (cascade)" if suite.get("cascade") else "")


def check_mergeable(inputs: list[Input]) -> None:
    """Eval files must share the data (ids sha256) and the suite: other numbers would not be comparable."""
    evals = [i for i in inputs if i.command == "eval"]
    for other in evals[1:]:
        first = evals[0]
        a, b = _ids(first.doc), _ids(other.doc)
        if a != b:
            raise RobenchError(f"{first.name} and {other.name} evaluate different data (ids sha256 {a[:8]}… vs "
                               f"{b[:8]}…); give files from the same dataset")
        a, b = _content(first.doc), _content(other.doc)
        if a and b and a != b:  # the same ids (file names) with other images: files of an older robench lack it
            raise RobenchError(f"{first.name} and {other.name} evaluate other images under the same ids (content "
                               f"sha256 {a[:8]}… vs {b[:8]}…); give files from the same dataset")
        a, b = suite_label(first.doc) or "none recorded", suite_label(other.doc) or "none recorded"
        if a != b:
            raise RobenchError(f"{first.name} and {other.name} ran different attack suites ({a} vs {b}); "
                               f"give files from the same suite")


def _robust(rows: pd.DataFrame) -> dict[float, float]:
    """Robust top-1 per eps: the worst-case rows when present, else the lowest top-1 over attacks."""
    adv = rows[rows["attack"] != "clean"]
    worst = adv[adv["attack"] == "worst"]
    return cast(dict[float, float], (worst if len(worst) else adv).groupby("eps")["top1"].min().to_dict())


def leaderboard(inputs: list[Input]) -> pd.DataFrame:
    """Models of every eval input as rows, clean and robust top-1 per eps as columns, most robust first.

    Sorted on the largest eps (then the smaller ones): robustness at the biggest budget is what
    separates defences; a model's label gets its file's name when two files share it.
    """
    evals = [i for i in inputs if i.command == "eval"]
    labels = [str(m) for i in evals for m in dict.fromkeys(i.rows["model"])]
    records = []
    for i in evals:
        rows = i.rows
        for model, group in rows.groupby("model", sort=False):
            clean = group.loc[group["attack"] == "clean", "top1"]
            label = f"{model} ({i.name})" if labels.count(str(model)) > 1 else str(model)
            robust = {f"eps {eps_label(e)}": v for e, v in _robust(group).items()}
            records.append({"model": label, "file": i.name, "clean": clean.iloc[0] if len(clean) else None,
                            **robust})
    frame = pd.DataFrame(records)
    eps_columns = sorted((c for c in frame.columns if c.startswith("eps ")), key=lambda c: -float(c[4:]))
    return frame.sort_values(eps_columns, ascending=False, kind="stable").reset_index(drop=True) \
        if eps_columns else frame


def leaderboard_text(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with shares as percentages (one decimal), for display."""
    return board.apply(lambda col: col if col.name in ("model", "file") else col.map(pct))


# accuracies and rates in %, gaps in points, as the terminal tables and the leaderboard show them; p-values stay shares
PERCENT_COLUMNS = ("top1", "top5", "success_rate", "target_top1", "target_top5", "target_error", "transfer_rate",
                   "transfer_rate_both_clean", "targeted_success_rate", "clean_top1", "fgsm_true_top1",
                   "fgsm_predicted_top1", "step_ll_top1",
                   "leak_gap", "leak_gap_low", "leak_gap_high", "adv_minus_clean", "adv_minus_clean_low",
                   "adv_minus_clean_high")


def rows_text(rows: pd.DataFrame) -> pd.DataFrame:
    """Result rows as display strings: shares in percent (one unit with the leaderboard), the rest by ``cell_text``."""
    return pd.DataFrame({f"{c} (%)" if c in PERCENT_COLUMNS else c:
                         [pct(v) if c in PERCENT_COLUMNS else cell_text(c, v) for v in rows[c]] for c in rows.columns})


def provenance(doc: dict[str, Any]) -> list[str]:
    """The results file's provenance lines (``report.provenance_lines``), and an eval's suite."""
    suite = suite_label(doc) if doc.get("command", "eval") == "eval" else ""
    return provenance_lines(doc) + ([f"suite: {suite}"] if suite else [])


def health_flags(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(text, docs link) per health flag the run recorded."""
    out = []
    for f in doc.get("health") or []:
        where = ", ".join(str(x) for x in (f.get("model"), f.get("attack")) if x)
        where += f", eps {eps_label(float(f['eps']))}" if f.get("eps") is not None else ""
        out.append((f"{f.get('check')} ({where}): {f.get('message')}", str(f.get("docs", ""))))
    return out


def figure(item: Input) -> Figure:
    """The input's matplotlib figure, as its command's --plot draws it."""
    if item.command == "leak-check":
        return plots.leak_figure(item.rows, item.doc)
    if item.command == "transfer-matrix":
        return plots.transfer_figure(item.rows)
    return plots.eval_figure(item.rows, item.doc)


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """A figure saved to memory (png or svg), then freed; svg without a date so reruns match."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    plots.pyplot().close(fig)
    return buffer.getvalue()


def figure_name(index: int, item: Input) -> str:
    """"2-results.png": unique per input, readable by its file."""
    return f"{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(item.name).stem)}.png"


def _title(item: Input) -> str:
    return f"{TITLES.get(item.command, item.command)}: {md_code(item.name)}"


def render_markdown(inputs: list[Input], figures_dir: str) -> tuple[str, dict[str, bytes]]:
    """The report as Markdown, and its PNG figures keyed by their path relative to the report."""
    parts, files = ["# robench report", ""], {}
    if any(i.command == "eval" for i in inputs):
        parts += ["## Leaderboard: robust top-1 (%)", "", to_markdown(leaderboard_text(leaderboard(inputs)))]
    for index, item in enumerate(inputs, 1):
        rel = f"{figures_dir}/{figure_name(index, item)}"
        files[rel] = figure_bytes(figure(item), "png")
        parts += [f"## {_title(item)}", "", *(f"- {md_text(line)}" for line in provenance(item.doc)), "",
                  to_markdown(rows_text(item.rows)), f"![{item.command} figure]({rel})", "",
                  *_markdown_health(item.doc)]
    return "\n".join(parts) + "\n", files


def _markdown_health(doc: dict[str, Any]) -> list[str]:
    flags = health_flags(doc)
    if not flags:
        return ["Health: no flags.", ""]
    return ["Health flags:", "", *(f"- {md_text(text)} ([why]({link}))" for text, link in flags), ""]


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;font-size:.85em;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}svg{max-width:100%;height:auto}")


def html_table(frame: pd.DataFrame) -> str:
    """A table of display strings, escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def inline_svg(fig: Figure, prefix: str) -> str:
    """The figure as an <svg> element, its XML prolog and doctype dropped so it sits inside HTML.

    matplotlib names the elements of every figure alike (glyphs, axes, clip paths), so each
    figure's ids, and the references to them, get ``prefix``: ids must be unique in a page.
    """
    text = figure_bytes(fig, "svg").decode("utf-8")
    text = text[text.index("<svg"):]
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    return re.sub(r'(href="|url\()#([^")]+)', lambda m: f"{m.group(1)}#{prefix}{m.group(2)}", text)


def render_html(inputs: list[Input]) -> str:
    """The report as one self-contained HTML page: inline style and SVG figures, no scripts, nothing fetched."""
    body = ["<h1>robench report</h1>"]
    if any(i.command == "eval" for i in inputs):
        body += ["<h2>Leaderboard: robust top-1 (%)</h2>", html_table(leaderboard_text(leaderboard(inputs)))]
    for k, item in enumerate(inputs, start=1):
        body += [f"<h2>{html.escape(_title(item).replace('`', ''))}</h2>",
                 "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in provenance(item.doc)) + "</ul>",
                 html_table(rows_text(item.rows)), f"<figure>{inline_svg(figure(item), f'f{k}-')}</figure>",
                 _html_health(item.doc)]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>robench report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_health(doc: dict[str, Any]) -> str:
    flags = health_flags(doc)
    if not flags:
        return "<p>Health: no flags.</p>"
    items = "".join(f"<li>{html.escape(t)} (<a href=\"{html.escape(link)}\">why</a>)</li>" for t, link in flags)
    return f"<p>Health flags:</p><ul>{items}</ul>"
