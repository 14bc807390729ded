"""Options shared by the commands that evaluate models, declared once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from robench.errors import FieldError

FIELD_OPTIONS = {"clean_refs": "--clean-ref"}  # config field -> the option that sets it

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
    click.option("--skip-bad-images", is_flag=True,
                 help="Leave unreadable images out, listed in the results, instead of stopping."),
)


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --data, --limit, --seed, --batch-size, --device, --pretrained, --workers and --skip-bad-images."""
    for option in reversed(_RUN_OPTIONS):
        command = option(command)
    return command


def resume_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --resume DIR."""
    return click.option(
        "--resume", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
        help="Keep finished batches in DIR as they complete; rerunning the same command there computes only the rest.",
    )(command)


def in_options(error: Exception) -> str:
    """An error's message, naming the option that sets a config field where the library named the field."""
    if isinstance(error, FieldError) and error.field in FIELD_OPTIONS:
        return f"{FIELD_OPTIONS[error.field]} {error.problem}"
    return str(error)
