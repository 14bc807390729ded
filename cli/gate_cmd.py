"""`robench gate`: the CI regression gate over a results file (also used by `robench eval --rules`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from robench.render.console import console

from .options import gate_options, say

if TYPE_CHECKING:  # the library is imported in the commands (a fast --help)
    from robench.gate.rules import Rules
    from robench.run.evaluate import EvalConfig


@dataclass(frozen=True)
class GatePlan:
    """Rules and baseline read and checked before any work; where the reports go."""

    rules: Rules
    baseline: dict[str, Any] | None
    baseline_path: Path | None
    rules_path: Path | None
    junit: Path | None = None
    summary: Path | None = None


def _writable(path: Path | None, field: str) -> None:
    """Any file name will do (GitHub's $GITHUB_STEP_SUMMARY has no suffix), in a writable folder; - is stdout."""
    from robench.core.outputs import check_output

    if path is not None:
        check_output(path, (path.suffix.lower(),), field, stdout=True)


def prepare_gate(rules_path: Path | None, baseline_path: Path | None, junit: Path | None = None,
                 summary: Path | None = None, inputs: tuple[tuple[str, Path | None], ...] = ()) -> GatePlan:
    """Read the rules and the baseline, and check the report paths: bad input fails before any evaluation.

    ``inputs``: other files read, as (option, path), which no report may overwrite (gate's RESULTS).
    """
    from robench.core.outputs import check_inputs, check_outputs, results_paths
    from robench.errors import RobenchError
    from robench.gate.rules import default_rules, load_rules
    from robench.results.read import load_results

    if rules_path is None and baseline_path is None:
        raise RobenchError("nothing to gate: give --rules gates.yaml, --baseline BASELINE.json, or both")
    check_inputs([*inputs, ("--rules", rules_path), ("--baseline", baseline_path)])
    _writable(junit, "junit")
    _writable(summary, "summary")
    check_outputs([("--junit", junit), ("--summary", summary)],
                  [*inputs, ("--rules", rules_path), *results_paths("--baseline", baseline_path)])
    rules = load_rules(rules_path) if rules_path is not None else default_rules()
    baseline = load_results(baseline_path, "baseline") if baseline_path is not None else None
    return GatePlan(rules, baseline, baseline_path, rules_path, junit, summary)


def check_planned_rows(plan: GatePlan, cfg: EvalConfig) -> None:
    """eval --rules: every rule must match a row the run (an EvalConfig) will write, before any work.

    A max_drop rule must also find one of them in the baseline.
    """
    from robench.gate.judge import check_planned, check_planned_baseline
    from robench.run.evaluate import planned_rows

    rows = planned_rows(cfg)
    check_planned(plan.rules, rows, "this eval")
    if plan.baseline is not None:
        check_planned_baseline(plan.rules, rows, plan.baseline, ("this eval", str(plan.baseline_path)),
                               cfg.describe())


def samples_check(plan: GatePlan) -> Callable[[dict[str, Any]], None]:
    """eval --baseline: the check of the samples against the baseline's, for ``run_eval(on_open=...)``."""
    from robench.gate.judge import check_samples

    return lambda dataset: check_samples(plan.rules, plan.baseline, dataset,
                                         ("eval results", str(plan.baseline_path)))


def apply_gate(plan: GatePlan, doc: dict[str, Any], name: str, quiet: bool = False) -> None:
    """Gate a results document, write the reports, print the table; CheckFailed (exit 1) when a check fails."""
    from robench.core.files import atomic_write_text
    from robench.gate import report as gate_report
    from robench.gate.judge import run_gate

    report = run_gate(doc, plan.baseline, plan.rules, (name, str(plan.baseline_path or "baseline")))
    for line in report.warnings:
        say(line)
    if plan.junit is not None:
        atomic_write_text(plan.junit, gate_report.junit(report))
    if plan.summary is not None:
        atomic_write_text(plan.summary, gate_report.markdown(report, _inputs(plan, name)))
    if not quiet:
        console().print(gate_report.table(report))
    report.raise_for_failures()


def _inputs(plan: GatePlan, name: str) -> str:
    from robench.core.text import md_code

    parts = [f"results {md_code(name)}"]
    parts.append(f"baseline {md_code(str(plan.baseline_path))}" if plan.baseline_path else "no baseline")
    parts.append(f"rules {md_code(str(plan.rules_path))}" if plan.rules_path
                 else "default rules (max_drop 0.02 on top1)")
    return ", ".join(parts) + "."


@click.command("gate")
@click.argument("results", type=click.Path(path_type=Path), metavar="RESULTS.json")
@gate_options()
@click.option("-q", "--quiet", is_flag=True, help="No table.")
def gate_command(results: Path, baseline_path: Path | None, rules_path: Path | None, junit: Path | None,
                 summary: Path | None, quiet: bool) -> None:
    """Check RESULTS.json against rules and a baseline; exit 1 when a check fails.

    A regression check fails only when the drop (baseline - results) is
    significantly above max_drop: the whole confidence interval of the drop
    (paired on per-sample outcomes when both files have them) lies above it,
    so a few flipped samples do not fail a gate. RESULTS may also be a .csv
    written by --out (with its .meta.json).

    \b
    Rules (gates.yaml), each checked on every row it matches (model/attack globs, eps):
      {attack: fgsm, eps: 8, min: 0.40}   floor (also max:), on metric top1 by default
      {model: "*", max_drop: 0.02}        no significant drop against --baseline
      {no_leak: true, model: "*"}         leak-check verdicts (allow_inconclusive: false)
      {health: strict}                    health findings fail the gate (warn: report only)
    Without --rules: max_drop 0.02 on top1 of every row in both files (needs --baseline).

    \b
    Examples:
      robench gate results.json --baseline baseline.json
      robench gate results.json --baseline base.json --rules gates.yaml --summary "$GITHUB_STEP_SUMMARY"
      robench gate leak.json --rules no-leak.yaml
    """
    from robench.core.outputs import results_paths
    from robench.results.read import load_results

    plan = prepare_gate(rules_path, baseline_path, junit, summary, tuple(results_paths("RESULTS", results)))
    apply_gate(plan, load_results(results), str(results), quiet)

