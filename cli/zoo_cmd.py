"""`robench zoo`: the built-in models."""

from __future__ import annotations

import click

from robench.render.console import console


@click.group("zoo")
def zoo_command() -> None:
    """The built-in zoo of tiny timm models trained by robench on digits and Fashion-MNIST.

    Use them anywhere a model spec goes, as zoo:NAME. Rebuild them with
    `python -m robench.train.zoo_build` (the same bytes on the same machine; elsewhere
    the same recipe and, within noise, the same accuracy).
    """


@zoo_command.command("list")
def list_command() -> None:
    """List the zoo models with their recipes and accuracy."""
    from rich.table import Table

    from robench.models.checkpoint import read_metadata
    from robench.models.zoo import DEFAULT, ZOO

    table = Table(title="robench zoo", title_justify="left")
    for column in ("name", "arch", "data", "training", "test acc %", "size KB", "default"):
        table.add_column(column, justify="right" if column in ("test acc %", "size KB") else "left")
    for entry in ZOO.values():
        meta = read_metadata(entry.path) if entry.path.is_file() else None
        acc = f"{100 * meta['val_accuracy']:.1f}" if meta else "missing"
        size = f"{entry.path.stat().st_size / 1024:.0f}" if meta else ""
        data = f"{entry.config.data}, {entry.config.image_size} px"
        table.add_row(f"zoo:{entry.name}", entry.config.arch, data, entry.summary, acc, size,
                      "yes" if entry.name in DEFAULT else "")
    console().print(table)
