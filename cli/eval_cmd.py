"""`robench eval`: white-box sweeps across attacks x eps."""

from __future__ import annotations

from pathlib import Path

import click

from .gate_cmd import apply_gate, prepare_gate
from .render import console, progress_bar


@click.command("eval")
@click.argument("specs", nargs=-1, metavar="[MODEL]...")
@click.option("-m", "--model", "models", multiple=True, metavar="SPEC",
              help="[LABEL=]NAME[@CHECKPOINT] or a robench .safetensors file (repeatable). Default: built-in model.")
@click.option("-d", "--data", default="digits", show_default=True,
              help="digits | fashion-mnist[:DIR] | IMAGE_FOLDER | torch/NAME | hfds/NAME.")
@click.option("--attacks", "attacks_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Attack suite YAML. Default: the built-in attacks.yaml.")
@click.option("--attack", "attack_names", multiple=True, metavar="NAME",
              help="Run only this attack (repeatable); suite entries keep their options.")
@click.option("--eps", "eps_text", metavar="LIST", help="Comma-separated eps in 1/255 units, e.g. 2,4,8 or 8/255.")
@click.option("--limit", type=int, metavar="N", help="Evaluate N samples, drawn by a seeded permutation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sample choice and PGD starts.")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--pretrained", is_flag=True, help="Load hub weights for NAME (needs network or a warm cache).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Data-loading worker processes for image folders.")
@click.option("-o", "--out", type=click.Path(path_type=Path), metavar="FILE",
              help="Write results: .json (full record), .csv (+ .meta.json) or .md.")
@click.option("--per-sample", type=click.Path(path_type=Path), metavar="FILE.csv",
              help="Write per-sample outcomes as CSV.")
@click.option("--gate", "gate_rules", type=click.Path(path_type=Path), metavar="GATES.yaml",
              help="Gate the results as 'robench gate' does, in memory; exit 1 when a check fails.")
@click.option("--baseline", type=click.Path(path_type=Path), metavar="BASELINE.json",
              help="Baseline for the gate (alone: max_drop 0.02 on top1 of every row).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table.")
def eval_command(specs: tuple[str, ...], models: tuple[str, ...], data: str, attacks_file: Path | None,
                 attack_names: tuple[str, ...], eps_text: str | None, limit: int | None, seed: int,
                 batch_size: int, device: str, pretrained: bool, workers: int, out: Path | None,
                 per_sample: Path | None, gate_rules: Path | None, baseline: Path | None, quiet: bool) -> None:
    """Attack each model with its own gradients across attacks x eps.

    Prints clean and adversarial top-1 / top-5 accuracy. With no model it
    evaluates the built-in default (a tiny timm model trained on digits).

    \b
    Examples:
      robench eval
      robench eval -m resnet18@weights.pth --data ./val --limit 500 --eps 2,4,8
      robench eval -m model.safetensors --attack fgsm --attack bim --out results.json
    """
    from robench.evaluate import EvalConfig, run_eval
    from robench.report import check_output, results_doc, results_table, write_per_sample, write_results
    from robench.suite import load_suite, override, parse_eps_list

    check_output(out)
    check_output(per_sample, (".csv",), "--per-sample")
    gate = prepare_gate(gate_rules, baseline) if gate_rules or baseline else None
    eps = parse_eps_list(eps_text) if eps_text is not None else None
    suite = override(load_suite(attacks_file), attack_names, eps)
    cfg = EvalConfig(models=specs + models, data=data, suite=suite, limit=limit, seed=seed,
                     batch_size=batch_size, device=device, pretrained=pretrained, workers=workers)
    with progress_bar(not quiet) as progress:
        result = run_eval(cfg, progress, warn=lambda msg: console(err=True).print(f"[yellow]warning:[/] {msg}"))
    if out is not None:
        write_results(out, result.meta, result.rows, result.packed_samples())
    if per_sample is not None:
        write_per_sample(per_sample, result.per_sample())
    if not quiet:
        console().print(results_table(result.rows))
    if gate is not None:
        apply_gate(gate, results_doc(result.meta, result.rows, result.packed_samples()), "eval results", quiet)
