"""`robench eval`: white-box sweeps across attacks x eps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robench.render.console import console, distributed_run, health_warnings

from .gate_cmd import apply_gate, check_planned_rows, prepare_gate, samples_check
from .options import (
    RobenchCommand,
    build_suite,
    check_outs,
    gate_options,
    model_option,
    out_option,
    precheck,
    print_dry_run,
    refuse_overwrite,
    resume_option,
    run_inputs,
    run_options,
    run_spec,
    say,
    suite_options,
    survivor_check_option,
    zoo_default_text,
)


@click.command("eval", cls=RobenchCommand, renamed={"--gate": "rules_path"})
@click.argument("specs", nargs=-1, metavar="[MODEL]...")
@model_option(zoo_default_text())
@suite_options
@click.option("--cascade/--no-cascade", default=None,
              help="Run each attack only on samples still robust after those before it (AutoAttack's standard "
                   "run). Default: the suite's setting.")
@click.option("--early-stop/--no-early-stop", default=None,
              help="Stop attacking a sample at its first misclassified iterate, and skip larger eps once fooled. "
                   "Default: the suite's setting.")
@run_options
@resume_option
@out_option()
@click.option("--plot", type=click.Path(path_type=Path), metavar="FILE",
              help="Top-1 against eps, a panel per model, with exact 95% bands: .png, .svg or .pdf "
                   "(needs the plot extra: matplotlib).")
@click.option("--per-sample", type=click.Path(path_type=Path), metavar="FILE",
              help="Write per-sample outcomes: .csv, or .parquet (typed, with the provenance; needs the parquet "
                   "extra: pyarrow); - for CSV on stdout (with -q: nothing else).")
@gate_options(
    baseline={"help": "Baseline for the gate (alone: max_drop 0.02 on top1 of every row)."},
    rules={"help": "Gate the results with these rules as 'robench gate --rules' does, in memory; exit 1 when a "
                   "check fails."},
    junit={"help": "With --rules/--baseline: write JUnit XML, as 'robench gate --junit' (- for stdout)."},
    summary={"help": "With --rules/--baseline: write the gate's Markdown summary, as 'robench gate --summary' "
                     "(- for stdout)."},
)
@click.option("--clean-ref", "clean_refs", multiple=True, metavar="LABEL=SHARE",
              help="Expected clean top-1 of a model (repeatable), e.g. base=0.97; a mismatch is a health warning.")
@click.option("--clean-ref-tol", type=click.FloatRange(min=0, max=1), metavar="X",
              help="Allowed |clean top-1 - reference|. Default: the exact 95% binomial interval for n.")
@click.option("--no-health", is_flag=True, help="Skip the health probes (see --probe-samples).")
@survivor_check_option("each worst row")
@click.option("--dry-run", is_flag=True,
              help="Time one batch per model and attack and print the passes per sample and the estimated time "
                   "of the whole run on this device; writes no results.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table.")
def eval_command(specs: tuple[str, ...], models: tuple[str, ...], suite_name: str | None,
                 attack_names: tuple[str, ...], eps_text: str | None, eps_unit: str, cascade: bool | None,
                 early_stop: bool | None,
                 resume: Path | None, outs: tuple[Path, ...], plot: Path | None,
                 per_sample: Path | None, rules_path: Path | None, baseline_path: Path | None, junit: Path | None,
                 summary: Path | None,
                 clean_refs: tuple[str, ...], clean_ref_tol: float | None, no_health: bool, survivor_check: int,
                 dry_run: bool,
                 quiet: bool, **run: Any) -> None:
    """Attack each model with its own gradients across attacks x eps.

    Prints clean and adversarial top-1 / top-5 accuracy, and per eps the "worst"
    row: robust accuracy as the per-sample worst case over the suite (a sample
    counts only if it is right clean and under every attack). With no model it
    evaluates the built-in default (the zoo's baseline and step l.l. models).

    \b
    Examples:
      robench eval
      robench eval --attacks autoattack
      robench eval -m resnet18@weights.pth --data ./val --limit 500 --eps 2,4,8
      robench eval -m model.safetensors --attack fgsm --attack bim --out results.json
      robench eval --attack fgsm --attack pgd --plot curves.png
      torchrun --nproc-per-node 4 -m robench eval -m resnet50 --pretrained --data ./val --resume ./state
    """
    from robench.core.outputs import check_output, check_outputs, check_per_sample, results_paths
    from robench.render.plots import PLOT_SUFFIXES

    precheck(run, eps_text, eps_unit, suite_name)  # before torch: a typo costs a second, not the imports
    refs = tuple(parse_clean_ref(r) for r in clean_refs)
    check_outs(outs)
    check_output(plot, PLOT_SUFFIXES, "plot")
    check_per_sample(per_sample)
    from robench.render.plots import check_plot, eval_figure, save_figure
    from robench.results.write import results_doc, write_per_sample, write_results
    from robench.run.evaluate import EvalConfig, run_eval

    check_plot(plot)
    check_outputs([*(p for o in outs for p in results_paths("--out", o)), ("--plot", plot),
                   ("--per-sample", per_sample), ("--junit", junit), ("--summary", summary)],
                  [("--rules", rules_path), *results_paths("--baseline", baseline_path),
                   *run_inputs(specs + models, suite_name, run.get("classes"), run.get("data"))])
    if (junit or summary) and not (rules_path or baseline_path):
        from robench.errors import RobenchError

        raise RobenchError("--junit and --summary report a gate: give --rules GATES.yaml and/or --baseline too")
    gate = prepare_gate(rules_path, baseline_path, junit, summary) if rules_path or baseline_path else None
    suite = build_suite(suite_name, attack_names, eps_text, cascade, early_stop, eps_unit)
    cfg = EvalConfig(specs + models, run_spec(suite=suite, health_probes=not no_health, **run), resume,
                     refs, clean_ref_tol, survivor_check=survivor_check)
    if gate is not None:
        check_planned_rows(gate, cfg)
    if dry_run:
        refuse_overwrite([*(("--out", o) for o in outs), ("--plot", plot), ("--per-sample", per_sample),
                          ("--junit", junit), ("--summary", summary)])
        print_dry_run(cfg)
        return
    with distributed_run(cfg.run.device, quiet, resume) as (dist, reporter):
        result = run_eval(cfg, reporter.progress, say, dist, reporter.status,
                          on_open=samples_check(gate) if gate is not None else None)
    if result is None:  # a torchrun rank other than 0: rank 0 writes and renders
        return
    for out in outs:
        write_results(out, result.meta, result.rows, result.packed_samples())
    if plot is not None:
        save_figure(eval_figure(result.rows, result.meta), plot)
    if per_sample is not None:
        write_per_sample(per_sample, result.per_sample(), result.meta)
    if not quiet:
        show_table(result.rows, result.meta, suite)
    health_warnings(result.health)
    if gate is not None:
        apply_gate(gate, results_doc(result.meta, result.rows, result.packed_samples()), "eval results", quiet)


def show_table(rows: Any, meta: dict[str, Any], suite: Any) -> None:
    """The results table, then the suite's passes against AutoAttack standard's where that compares."""
    from robench.render.tables import budget_line, results_table

    console().print(results_table(rows, suite=suite))
    cost = budget_line(meta.get("budget"), suite)
    if cost is not None:
        console().print(cost)


def parse_clean_ref(text: str) -> tuple[str, float]:
    """``LABEL=0.97`` -> ("LABEL", 0.97): a model's expected clean top-1, as a share."""
    from robench.errors import RobenchError

    label, sep, value = text.rpartition("=")
    try:
        share = float(value)
    except ValueError:
        share = float("nan")
    if not sep or not label or not 0 <= share <= 1:
        raise RobenchError(f"--clean-ref {text!r}: use LABEL=SHARE with a share in [0, 1], e.g. --clean-ref base=0.97")
    return label, share
