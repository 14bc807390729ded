"""Options shared by the commands that evaluate models, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

_RUN_OPTIONS = (
    click.option("-d", "--data", default="digits", show_default=True,
                 help="digits | fashion-mnist[:DIR] | IMAGE_FOLDER | torch/NAME | hfds/NAME."),
    click.option("--limit", type=int, metavar="N", help="Use N samples, drawn by a seeded permutation."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed for sample choice and PGD starts."),
    click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--pretrained", is_flag=True, help="Load hub weights for NAME (needs network or a warm cache)."),
    click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Data-loading worker processes for image folders."),
)


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --data, --limit, --seed, --batch-size, --device, --pretrained and --workers."""
    for option in reversed(_RUN_OPTIONS):
        command = option(command)
    return command
