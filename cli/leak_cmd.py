"""`robench leak-check`: measure label leaking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robench.render.console import console, distributed_run, health_warnings

from .options import (
    check_outs,
    eps_unit_option,
    joined_eps,
    model_option,
    out_option,
    precheck,
    resume_option,
    run_inputs,
    run_options,
    run_spec,
    say,
)


@click.command("leak-check")
@click.argument("specs", nargs=-1, metavar="[MODEL]...")
@model_option("Default: the zoo's fgsm-true, fgsm-pred and stepll models.")
@click.option("--eps", "eps_text", metavar="LIST", multiple=True,
              callback=joined_eps, help="Comma-separated eps in 1/255 units, or 8/255, 0.03px (a plain number below 1 "
                                        "is refused); repeatable. Default: 2,4,8,16 and the eps each model's "
                                        "checkpoint says it was adversarially trained at (a model leaks there).")
@eps_unit_option
@run_options
@resume_option
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, metavar="X", help="Family-wise error rate of a LEAK verdict, per model.")
@click.option("--margin", type=click.FloatRange(0, 1), default=0.02, show_default=True, metavar="X",
              help="Largest gap (accuracy share) an OK verdict tolerates.")
@click.option("--fail-on-leak", is_flag=True, help="Exit 1 when any model leaks (for CI).")
@out_option()
@click.option("--plot", type=click.Path(path_type=Path), metavar="FILE",
              help="Top-1 against eps per model, with its verdict: .png, .svg or .pdf (needs matplotlib).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no table.")
def leak_command(specs: tuple[str, ...], models: tuple[str, ...], eps_text: str | None, eps_unit: str,
                 resume: Path | None, alpha: float, margin: float, fail_on_leak: bool, outs: tuple[Path, ...],
                 plot: Path | None, quiet: bool, **run: Any) -> None:
    """Measure label leaking: does the true label make FGSM weaker?

    Label leaking (Kurakin et al. 2017, section 4.1): a model adversarially
    trained with FGSM on true labels can learn to read the label back out of
    the perturbation, and then scores higher on FGSM examples than on clean
    ones, so its adversarial accuracy overstates its robustness. On the same
    images this command measures clean top-1 and top-1 under fgsm with true
    labels, fgsm with the model's predicted labels, and step_ll. leak_gap =
    acc(fgsm_true) - acc(fgsm_predicted) and adv_minus_clean = acc(fgsm_true)
    - acc(clean); either significantly above 0 (exact McNemar tests,
    Holm-corrected) gives LEAK. OK needs every gap's upper confidence bound
    at most --margin; otherwise INCONCLUSIVE (too few samples). To avoid
    leaking, train with predicted labels (--label predicted) or with step_ll,
    and evaluate with predicted labels.

    \b
    Examples:
      robench leak-check
      robench leak-check -m model.safetensors --data fashion-mnist --limit 2000 --fail-on-leak
      robench leak-check --plot leak.png
    """
    from robench.core.eps import parse_eps_list
    from robench.core.outputs import check_output, check_outputs, results_paths
    from robench.render.plots import PLOT_SUFFIXES

    precheck(run, eps_text, eps_unit)  # before torch: a typo costs a second, not the imports
    check_outs(outs)
    check_output(plot, PLOT_SUFFIXES, "plot")
    from robench.render.plots import check_plot, leak_figure, save_figure
    from robench.render.tables import leak_table
    from robench.results.write import write_results
    from robench.run.evaluate import EvalConfig
    from robench.run.leak import (
        DEFAULT_MODELS,
        LEAK,
        LeakConfig,
        default_eps,
        leak_suite,
        run_leak_check,
        untested_training_eps,
    )

    check_plot(plot)
    check_outputs([*(p for o in outs for p in results_paths("--out", o)), ("--plot", plot)],
                  run_inputs(specs + models, classes=run.get("classes"), data=run.get("data")))
    eps = parse_eps_list(eps_text, unit=eps_unit) if eps_text is not None else default_eps(specs + models)
    for note in untested_training_eps(specs + models, eps):
        say(note)
    suite = leak_suite(eps)
    eval_cfg = EvalConfig((specs + models) or DEFAULT_MODELS, run_spec(suite=suite, **run), resume)
    cfg = LeakConfig(eval=eval_cfg, alpha=alpha, margin=margin)
    with distributed_run(eval_cfg.run.device, quiet, resume) as (dist, reporter):
        result = run_leak_check(cfg, reporter.progress, say, dist, reporter.status)
    if result is None:  # a torchrun rank other than 0
        return
    for out in outs:
        write_results(out, result.meta, result.rows, result.packed_samples())
    if plot is not None:
        save_figure(leak_figure(result.rows, result.meta), plot)
    if not quiet:
        console().print(leak_table(result.rows))
    health_warnings(result.health)
    if fail_on_leak and result.leaking:
        from robench.errors import CheckFailed

        raise CheckFailed(f"{LEAK}: label leaking in {', '.join(result.leaking)}: leak_gap or adv_minus_clean is "
                          f"significantly > 0 (--fail-on-leak)")
