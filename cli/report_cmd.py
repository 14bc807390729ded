"""`robench report`: results files -> one Markdown or HTML report (robench.render.report_doc)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click


def _check_paths(results: tuple[Path, ...], out: Path) -> None:
    """Refuse a bad -o before any work, and never overwrite an input."""
    from robench.core.outputs import check_inputs, check_output, check_outputs, results_paths
    from robench.errors import RobenchError
    from robench.render.report_doc import REPORT_SUFFIXES

    check_inputs([("RESULTS", r) for r in results])
    check_output(out, REPORT_SUFFIXES, "-o")
    check_outputs([("-o", out)], [p for r in results for p in results_paths("RESULTS", r)])
    figures = out.parent / f"{out.stem}_files"
    if out.suffix.lower() == ".md" and (figures.exists() or figures.is_symlink()) and not figures.is_dir():
        raise RobenchError(f"-o {out}: its figures go in the folder {figures}, which is a file; remove it or give "
                           "-o another name")


def write_report(results: tuple[Path, ...], out: Path) -> list[Path]:
    """Read the inputs, render the report for the suffix of ``out``, write it atomically; returns files written."""
    from robench.core.files import atomic_write, atomic_write_text
    from robench.render.report_doc import load_inputs, render_html, render_markdown

    inputs = load_inputs(list(results))
    if out.suffix.lower() == ".html":
        atomic_write_text(out, render_html(inputs))
        return [out]
    text, figures = render_markdown(inputs, f"{out.stem}_files")
    written = []
    for rel, data in figures.items():
        path = out.parent / rel
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, partial(Path.write_bytes, data=data))
        written.append(path)
    atomic_write_text(out, text)
    return [out, *written]


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RESULTS.json...")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="The report: FILE.md (PNG figures in FILE_files/ beside it) or FILE.html (one file, inline SVG).")
@click.option("-q", "--quiet", is_flag=True, help="Do not list the files written.")
def report_command(results: tuple[Path, ...], out: Path, quiet: bool) -> None:
    """Write one report from results files of eval, transfer-matrix and leak-check.

    Per file: provenance (versions, dataset and ids sha256, models and
    weights sha256), the rows, the figure and the health flags. Eval files
    on the same data (ids sha256) and suite also merge into one leaderboard,
    most robust first (worst case, else the strongest attack, at the largest
    eps); eval files on different data or suites are refused (exit 2).

    \b
    Examples:
      robench report a.json b.json -o report.md
      robench report results.json leak.json transfer.json -o report.html
    """
    _check_paths(results, out)
    for path in write_report(results, out):
        if not quiet:
            click.echo(f"wrote {path}")
