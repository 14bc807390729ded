"""Result rows -> rich tables for the terminal (eval, transfer, leak)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from robench.core.text import cell_text, eps_with_unit, pct

if TYPE_CHECKING:  # rich is imported where a table is drawn (a fast --help); here for its types only
    from rich.table import Table

    from robench.attacks.suite import Suite


def results_table(rows: pd.DataFrame, title: str = "robench eval: top-1 / top-5 accuracy (%)",
                  suite: Suite | None = None) -> Table:
    """A rich table: one line per (model, attack), one column per eps (L-inf in 1/255, then L2), the worst case last.

    Under a cascade suite an attack row is the accuracy after that stage, and is labelled so.
    """
    from rich.table import Table

    eps_values = threat_eps(rows)
    cascade = bool(getattr(suite, "cascade", False))
    caption = f"rows: {suite.semantics()}" if suite is not None else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("model", style="bold")
    table.add_column("attack")
    table.add_column("clean", justify="right")
    for norm, e in eps_values:
        table.add_column(f"eps {eps_with_unit(e, norm)}", justify="right")
    for model, group in rows.groupby("model", sort=False):
        clean = group[group["attack"] == "clean"].iloc[0]
        table.add_row(str(model), "clean", f"{pct(clean.top1)} / {pct(clean.top5)}", *[""] * len(eps_values))
        for attack, g in group[group["attack"] != "clean"].groupby("attack", sort=False):
            by_eps = {(row_norm(r), r.eps): f"{pct(r.top1)} / {pct(r.top5)}" for r in g.itertuples()}
            label = _attack_label(str(attack), cascade)
            table.add_row("", label, "", *[by_eps.get(k, "") for k in eps_values],
                          style="bold" if attack in ("worst", "worst-l2") else None)
        table.add_section()
    return table


def row_norm(row: object) -> str:
    """A row's threat model: l2, else linf (a clean row, or a results file older than L2, has none)."""
    return "l2" if getattr(row, "norm", None) == "l2" else "linf"


def threat_eps(rows: pd.DataFrame) -> list[tuple[str, float]]:
    """The distinct (norm, eps) of the attack rows: L-inf eps ascending, then L2 eps ascending."""
    found = {(row_norm(r), float(r.eps)) for r in rows[rows["attack"] != "clean"].itertuples()}
    return sorted(found, key=lambda k: (k[0] == "l2", k[1]))


AUTOATTACK_FAMILY = ("apgd", "apgd_t", "fab_t", "square")  # suites whose cost is worth setting against AutoAttack's


def budget_line(budget: dict | None, suite: Suite | None) -> str | None:
    """One line: passes per sample spent and planned, against AutoAttack standard's; None for other suites."""
    if not budget or not budget.get("autoattack") or suite is None \
            or not any(a.name in AUTOATTACK_FAMILY for a in suite.attacks):
        return None
    aa = budget["autoattack"]
    spent = ", ".join(f"{m} {p:,.0f} ({p / aa:.1%})" for m, p in (budget.get("spent") or {}).items())
    return (f"passes per sample against AutoAttack standard's {aa:,}: spent {spent or 'none'}; "
            f"planned {budget['planned']:,} ({budget['planned'] / aa:.1%})")


def _attack_label(attack: str, cascade: bool) -> str:
    if attack == "worst":
        return "worst case (robust accuracy)"
    if attack == "worst-l2":
        return "worst case L2 (robust accuracy)"
    return f"after {attack}" if cascade else attack


def targeted(rows: pd.DataFrame) -> bool:
    """Whether transfer rows are a targeted run's: their targeted success rate is filled in somewhere."""
    return "targeted_success_rate" in rows and bool(rows["targeted_success_rate"].notna().any())


def transfer_tables(rows: pd.DataFrame) -> list[Table]:
    """One rich table per (attack, eps): sources as rows, targets as columns, transfer rate (target top-1).

    A targeted run's cells also give the targeted success rate ("hit").
    """
    from rich.table import Table

    adv = rows[rows["attack"] != "clean"]
    targets, hit = list(dict.fromkeys(adv["target"])), targeted(rows)
    tables = []
    for (attack, eps), group in adv.groupby(["attack", "eps"], sort=False):
        title = f"{attack} eps {eps_with_unit(eps, row_norm(group.iloc[0]))}: transfer rate % (target top-1 %), " \
                "n source-fooled"
        table = Table(title=title + (", hit: targeted success %" if hit else ""), title_justify="left")
        table.add_column("source \\ target", style="bold")
        for t in targets:
            table.add_column(str(t), justify="right")
        for source, g in group.groupby("source", sort=False):
            cells = {r.target: (f"{pct(r.transfer_rate) or '-'} ({pct(r.target_top1)}) "
                                f"n={cell_text('n_fooled_source', getattr(r, 'n_fooled_source', None)) or '-'}"
                                if r.source != r.target else f"white-box ({pct(r.target_top1)})")
                     + (f" hit {pct(r.targeted_success_rate)}" if hit else "") for r in g.itertuples()}
            table.add_row(str(source), *[cells.get(t, "") for t in targets])
        tables.append(table)
    return tables


SUMMARIES = {  # a transfer summary's metric -> its title and caption
    "transfer_rate": ("mean transfer rate %", "off-diagonal cells, the paper's definition; an ensemble's own "
                                              "members left out"),
    "targeted_success_rate": ("mean targeted success rate %", "off-diagonal cells, of all samples; an ensemble's "
                                                              "own members left out"),
}


def member(source: str, target: str, labels: set[str], targets: set[str]) -> bool:
    """Is ``target`` one of the models of the ensemble source ``source`` ("a+b+c"), a white-box cell in all but name?

    ``labels``: every source and target of the rows; ``targets``: the targets (a model's own label is no ensemble).
    """
    parts = source.split("+")
    return len(parts) > 1 and source not in targets and all(p in labels for p in parts) and target in parts


def transfer_summary(rows: pd.DataFrame, metric: str = "transfer_rate") -> Table:
    """The mean off-diagonal ``metric`` (SUMMARIES) per attack (columns) and eps (rows): docs/transfer.md's table."""
    from rich.table import Table

    cells = rows[(rows["attack"] != "clean") & (rows["source"] != rows["target"])]
    labels, targets = set(rows["target"]) | set(rows["source"]), set(rows["target"])
    cells = cells[[not member(s, t, labels, targets) for s, t in zip(cells["source"], cells["target"], strict=True)]]
    cells = cells.assign(threat=[row_norm(r) for r in cells.itertuples()])
    means = cells.groupby(["threat", "eps", "attack"], sort=False)[metric].mean()
    attacks = list(dict.fromkeys(cells["attack"]))
    title, caption = SUMMARIES[metric]
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left",
                  min_width=len(caption) + 2)  # rich wraps a title and caption to the table's width
    table.add_column("eps", justify="right", style="bold")
    for attack in attacks:
        table.add_column(str(attack), justify="right")
    for norm, eps in threat_eps(cells):
        table.add_row(eps_with_unit(eps, norm), *[pct(means.get((norm, eps, a), float("nan"))) or "-"
                                                  for a in attacks])
    return table


VERDICT_STYLE = {"LEAK": "bold red", "OK": "bold green", "INCONCLUSIVE": "bold yellow"}


def _gap(value: float, low: float, high: float, significant: bool) -> str:
    """A gap in points with its interval, starred when significant."""
    star = " *" if significant else ""
    return f"{100 * value:+.1f} \\[{100 * low:+.1f}, {100 * high:+.1f}]{star}"


def leak_table(rows: pd.DataFrame) -> Table:
    """A rich table: one line per (model, eps), accuracies in %, gaps in points, the verdict highlighted."""
    from rich.table import Table

    table = Table(title="robench leak-check: top-1 (%) and gaps (points, \\[interval], * significant)",
                  title_justify="left")
    for name in ("model", "eps", "clean", "fgsm true", "fgsm pred", "step_ll", "leak_gap", "adv - clean", "verdict"):
        table.add_column(name, justify="left" if name in ("model", "verdict") else "right")
    for model, group in rows.groupby("model", sort=False):
        for i, r in enumerate(group.to_dict("records")):
            verdict = f"[{VERDICT_STYLE[r['verdict']]}]{r['verdict']}[/]" if i == 0 else ""
            table.add_row(
                str(model) if i == 0 else "", eps_with_unit(r["eps"]), pct(r["clean_top1"]),
                pct(r["fgsm_true_top1"]), pct(r["fgsm_predicted_top1"]), pct(r["step_ll_top1"]),
                _gap(r["leak_gap"], r["leak_gap_low"], r["leak_gap_high"], r["leak_gap_significant"]),
                _gap(r["adv_minus_clean"], r["adv_minus_clean_low"], r["adv_minus_clean_high"],
                     r["adv_minus_clean_significant"]),
                verdict,
            )
        table.add_section()
    return table


def dry_run_table(rows: pd.DataFrame, device: str) -> Table:
    """A dry run's estimate: per model and attack, passes per sample and the time for every sample."""
    from rich.table import Table

    table = Table(title=f"robench dry run on {device}: one batch timed, nothing written")
    for name in ("model", "attack", "passes / sample", "ms / sample", "samples", "estimate"):
        table.add_column(name, justify="left" if name in ("model", "attack") else "right")
    for r in rows.to_dict("records"):
        table.add_row(str(r["model"]), str(r["attack"]), f"{r['passes_per_sample']:g}",
                      f"{float(r['seconds_per_sample']) * 1e3:.2f}", str(r["samples"]),
                      duration(float(r["estimated_seconds"])))
    total = float(rows["estimated_seconds"].sum())
    table.add_section()
    table.add_row("all", "", "", "", "", duration(total))
    return table


def duration(seconds: float) -> str:
    """Seconds as 45 s, 12.5 min or 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
