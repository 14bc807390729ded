"""`robench schema`: the JSON Schema of the files robench writes, for other tools to read them."""

from __future__ import annotations

import json
from pathlib import Path

import click

KINDS = ("results",)


@click.command("schema")
@click.argument("kind", type=click.Choice(KINDS), default="results")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Write the schema to this .json file instead of stdout.")
def schema_command(kind: str, out: Path | None) -> None:
    """Print the JSON Schema of a robench file (KIND: results, the --out FILE.json of eval,
    transfer-matrix and leak-check).

    The schema is generated from the models robench validates its files with on read
    (gate, baseline update, report), so it is the contract: every field a reader uses,
    with its type and range. schemas/results.schema.json in the repository holds the same.

    \b
    Example:
      robench schema results -o results.schema.json
    """
    from robench.core.files import atomic_write_text
    from robench.core.outputs import check_output
    from robench.results.schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    check_output(out, (".json",), "out", stdout=True)
    atomic_write_text(out, text)
