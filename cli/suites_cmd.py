"""`robench suites`: the built-in attack suites."""

from __future__ import annotations

import click

from robench.render.console import console


@click.command("suites")
def suites_command() -> None:
    """List the built-in attack suites, usable as --attacks NAME.

    paper is the default. Any YAML file in the same format works as --attacks FILE;
    the built-ins live in the installed package (robench/attacks/attacks.yaml, robench/attacks/suites/).
    """
    from rich.table import Table

    from robench.attacks.suite import built_in_suites
    from robench.core.text import eps_with_unit

    table = Table(title="robench suites (--attacks NAME)", title_justify="left", show_lines=True)
    for column in ("name", "attacks", "eps", "mode", "about"):
        table.add_column(column)
    for name, suite, about in built_in_suites():
        attacks = ", ".join(a.id for a in suite.attacks)
        eps = ", ".join(dict.fromkeys(eps_with_unit(e, a.norm) for a in suite.attacks for e in a.eps))
        mode = ", ".join(m for m, on in (("cascade", suite.cascade), ("early stop", suite.early_stop)) if on) or "full"
        table.add_row(name + (" (default)" if name == "paper" else ""), attacks, eps, mode, about)
    console().print(table)
