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
    from robench.core.files import atomic_write_text
    from robench.core.outputs import check_inputs, check_output, check_outputs, results_paths
    from robench.results.read import results_json

    check_inputs([("RESULTS", results)])
    check_output(baseline, (".json",), "BASELINE")
    check_outputs([("BASELINE", baseline)], results_paths("RESULTS", results))
    doc, text = results_json(results)
    atomic_write_text(baseline, text)
    models = ", ".join(dict.fromkeys(str(r.get("model", r.get("target", "?"))) for r in doc["rows"]))
    paired = "with" if doc.get("samples") else "without"
    click.echo(f"baseline {baseline} <- {results}: {len(doc['rows'])} rows ({models}), "
               f"{paired} per-sample outcomes")
