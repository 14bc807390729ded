"""`robench transfer-matrix`: black-box transfer across sources, targets, attacks and eps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robench.render.console import console, distributed_run, health_warnings

from .options import (
    build_suite,
    check_outs,
    model_option,
    out_option,
    precheck,
    print_dry_run,
    refuse_overwrite,
    run_inputs,
    run_options,
    run_spec,
    say,
    suite_options,
    survivor_check_option,
    target_class_option,
)


def _labels(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def _members(text: str) -> tuple[str, ...]:
    """An ensemble's member labels: 'a+b+c' -> ('a', 'b', 'c'); an empty one stays, to be refused by name."""
    return tuple(t.strip() for t in text.split("+"))


@click.command("transfer-matrix")
@click.argument("specs", nargs=-1, metavar="MODEL...")
@model_option("At least one model, here or as MODEL arguments; two or more to measure transfer.")
@click.option("--sources", metavar="LIST", help="Comma-separated labels crafting examples. Default: every model.")
@click.option("--targets", metavar="LIST", help="Comma-separated labels scoring them. Default: every model.")
@click.option("--source-ensemble", "ensembles", multiple=True, metavar="LABELS",
              help="One more source: the models of these labels (two or more, joined by '+': a+b+c) attacked as one "
                   "ensemble, its examples scored on every target, held-out models included; repeatable. "
                   "It is a source beside those of --sources (default: every model).")
@click.option("--ensemble-by", metavar="MODE", default="logits", show_default=True,
              help="How an ensemble combines its members: logits, the mean of their logits (MI-FGSM's eq. 6); "
                   "probs, the log of the mean of their softmax probabilities; or loss, the mean of their "
                   "cross-entropy losses (attacks that step on cross-entropy only: not apgd, apgd_t, fab_t, square).")
@suite_options
@target_class_option
@run_options
@click.option("--cache", type=click.Path(path_type=Path), metavar="DIR",
              help="Keep adversarial examples here; a rerun crafts only what is missing.")
@out_option()
@click.option("--plot", type=click.Path(path_type=Path), metavar="FILE",
              help="Heatmaps of the transfer rate: .png, .svg or .pdf (needs the plot extra: matplotlib).")
@click.option("--no-health", is_flag=True, help="Skip the health probes (see --probe-samples).")
@survivor_check_option("each source's white-box diagonal, per eps")
@click.option("--dry-run", is_flag=True,
              help="Time one batch per source and attack (crafting and scoring on every target) and print the "
                   "passes per sample, the estimated time of the whole run on this device and the example "
                   "store's bytes; writes nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no tables.")
def transfer_command(specs: tuple[str, ...], models: tuple[str, ...], sources: str | None, targets: str | None,
                     ensembles: tuple[str, ...], ensemble_by: str,
                     suite_name: str | None, attack_names: tuple[str, ...], eps_text: str | None, eps_unit: str,
                     target_class: str | None, cache: Path | None, outs: tuple[Path, ...], plot: Path | None,
                     no_health: bool, survivor_check: int, dry_run: bool, quiet: bool, **run: Any) -> None:
    """Craft adversarial examples on each source model and score them on every target.

    Examples are crafted once per (source, attack, eps) and scored on all targets;
    the diagonal is the white-box result. transfer_rate (the paper's): among samples
    the source classifies correctly when clean and wrongly on its example, the share
    the target classifies wrongly; transfer_rate_both_clean also requires the target
    to be right when clean, and target_error is 1 - target_top1. An example reaches a target of another input
    size as the source's perturbation resized (bilinear) onto the target's own input. With --target-class,
    targeted_success_rate is the share of all samples the target classifies as the class aimed at.

    \b
    Examples:
      robench transfer-matrix zoo:effnet-base zoo:resnet-base zoo:effnet-stepll --eps 8,16
      robench transfer-matrix zoo:effnet-base zoo:resnet-base --attack fgsm --attack pgd --target-class random
      robench transfer-matrix zoo:effnet-base zoo:resnet-base zoo:resnet-stepll --source-ensemble \\
        effnet-base+resnet-base
      torchrun --nproc-per-node 2 -m robench transfer-matrix zoo:effnet-base zoo:resnet-base --out t.json
    """
    from robench.core.outputs import check_output, check_outputs, results_paths
    from robench.render.plots import PLOT_SUFFIXES

    precheck(run, eps_text, eps_unit, suite_name)  # before torch: a typo costs a second, not the imports
    if not specs + models:  # no default here (eval's is the zoo's): say so before torch
        from robench.errors import FieldError

        raise FieldError("models", "transfer-matrix needs at least one model: give MODEL arguments or {name} SPEC, "
                                   "e.g. zoo:effnet-base zoo:resnet-base")
    check_outs(outs)
    check_output(plot, PLOT_SUFFIXES, "plot")
    from robench.attacks.suite import aimed
    from robench.render.plots import check_plot
    from robench.results.write import write_results
    from robench.run.transfer import TransferConfig, run_transfer

    check_plot(plot)
    check_outputs([*(p for o in outs for p in results_paths("--out", o)), ("--plot", plot)],
                  run_inputs(specs + models, suite_name, run.get("classes"), run.get("data")))
    suite = build_suite(suite_name, attack_names, eps_text, eps_unit=eps_unit)
    if target_class is not None:
        suite = aimed(suite, target_class)
    cfg = TransferConfig(specs + models, _labels(sources), _labels(targets),
                         run_spec(suite=suite, health_probes=not no_health, target_class=target_class, **run), cache,
                         survivor_check, tuple(_members(e) for e in ensembles), ensemble_by)
    if dry_run:
        refuse_overwrite([*(("--out", o) for o in outs), ("--plot", plot)])
        print_dry_run(cfg)
        return
    with distributed_run(cfg.run.device, quiet) as (dist, reporter):
        result = run_transfer(cfg, reporter.progress, say, dist, reporter.status, None if quiet else _note)
    if result is None:  # a torchrun rank other than 0: rank 0 writes and renders
        return
    for out in outs:
        write_results(out, result.meta, result.rows)
    _show(result.rows, plot, quiet)
    health_warnings(result.health)


def _show(rows: Any, plot: Path | None, quiet: bool) -> None:
    """The heatmaps (``plot``) and the terminal tables; a targeted run's heatmaps show its targeted success rate."""
    from robench.render.plots import save_figure, transfer_figure
    from robench.render.tables import targeted, transfer_summary, transfer_tables

    metric = "targeted_success_rate" if targeted(rows) else "transfer_rate"
    if plot is not None:
        save_figure(transfer_figure(rows, metric), plot)
    if quiet:
        return
    for table in transfer_tables(rows):
        console().print(table)
    if (rows["source"] != rows["target"]).any():
        console().print(transfer_summary(rows))
        if metric != "transfer_rate":
            console().print(transfer_summary(rows, metric))


def _note(message: str) -> None:
    """A line of information on stderr (stdout keeps the tables)."""
    click.echo(f"robench: {message}", err=True)
