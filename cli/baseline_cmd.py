"""`robench baseline update`: replace a gate's baseline on purpose."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("baseline")
def baseline_group() -> None:
    """Manage the baseline results a gate compares against (a gate never writes it)."""


@baseline_group.command("update")
@click.argument("results", type=click.Path(path_type=Path), metavar="RESULTS.json")
@click.argument("baseline", type=click.Path(path_type=Path), metavar="BASELINE.json")
def update_command(results: Path, baseline: Path) -> None:
    """Copy RESULTS to BASELINE, after checking it is a results file of this schema.

    The copy is atomic: BASELINE is either the old file or the new one. A .csv
    RESULTS (with its .meta.json) becomes a JSON baseline without per-sample
    outcomes, so gates against it compare accuracies unpaired.

    \b
    Example:
      robench eval --out results.json && robench baseline update results.json ci/baseline.json
    """
    import json

    from robench.files import atomic_write_text
    from robench.gate import load_results
    from robench.report import check_output

    check_output(baseline, (".json",), "BASELINE")
    doc = load_results(results)
    is_json = results.suffix.lower() != ".csv"
    text = results.read_text(encoding="utf-8") if is_json else json.dumps(doc, indent=2, allow_nan=False) + "\n"
    atomic_write_text(baseline, text)
    models = ", ".join(dict.fromkeys(str(r.get("model", r.get("target", "?"))) for r in doc["rows"]))
    paired = "with" if doc.get("samples") else "without"
    click.echo(f"baseline {baseline} <- {results}: {len(doc['rows'])} rows ({models}), "
               f"{paired} per-sample outcomes")
