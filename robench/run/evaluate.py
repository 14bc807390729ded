"""White-box sweeps: each model attacked with its own gradients across attacks x eps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robench import engine
from robench.analysis import health, metrics, worst
from robench.attacks.suite import WORST, budget_record
from robench.core.distributed import LOCAL, Dist
from robench.core.fields import Rule, check
from robench.engine import Progress, Status
from robench.engine.resume import RunState, fingerprint
from robench.results import samples
from robench.results.provenance import dataset_record, envelope, resume_versions
from robench.run.precision import check_precision
from robench.run.runspec import Opened, Probed, RunSpec, model_texts_problem, open_run, parse_specs, probe_models
from robench.run.survivors import SURVIVOR_CHECK, SURVIVOR_RULE, survivor_check

EVAL_FIELDS = {  # robench.core.fields; NaN fails every comparison: as a tolerance it would flag nothing, silently
    "models": Rule(tuple, "a tuple of model specs (text)", test=model_texts_problem),
    "run": Rule(RunSpec, "a RunSpec (robench.run.runspec)"),
    "clean_ref_tol": Rule(float | None, "a share in [0, 1]", low=0, high=1, must="be a share in [0, 1]"),
    "worst": Rule(bool, "True or False"),
    "survivor_check": SURVIVOR_RULE,
}


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides the numbers of an eval run."""

    models: tuple[str, ...] = ()  # empty: the zoo's default pair (a baseline and a step_ll model)
    run: RunSpec = field(default_factory=RunSpec)
    resume: Path | None = None  # state folder: finished batches are kept there, and taken from there
    clean_refs: tuple[tuple[str, float], ...] = ()  # (label, expected clean top-1): checked against the result
    clean_ref_tol: float | None = None  # allowed |clean top-1 - reference|; None: the exact 95% interval for n
    worst: bool = True  # add the per-sample worst-case rows (attack "worst"; leak-check leaves them out)
    survivor_check: int = SURVIVOR_CHECK  # a suite with shortcuts: full AutoAttack on this many survivors; 0 off

    def __post_init__(self) -> None:
        check(self, EVAL_FIELDS)

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files: the run's fields alongside eval's own."""
        return {"models": list(self.models), **self.run.describe(),
                "resume": None if self.resume is None else str(self.resume),
                "clean_refs": [list(r) for r in self.clean_refs], "clean_ref_tol": self.clean_ref_tol,
                "worst": self.worst, "survivor_check": self.survivor_check}


@dataclass
class EvalResult:
    """Tidy rows (one per model x attack x eps), per-sample outcomes, and provenance."""

    rows: pd.DataFrame
    outcomes: dict[str, engine.Outcomes]
    meta: dict[str, Any]
    health: list[health.Flag] = field(default_factory=list)  # also in meta["health"], as records

    def per_sample(self) -> pd.DataFrame:
        """Tidy per-sample rows for every model, with each sample's smallest breaking eps (``min_eps``)."""
        frames = []
        for m, o in self.outcomes.items():
            frame = metrics.per_sample(o, m)
            frame["min_eps"] = np.tile(worst.min_eps(o), len(o.settings))
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def packed_samples(self) -> dict[str, Any]:
        """Packed per-sample top-1/top-5 correctness, one record per row (for results files)."""
        return samples.from_outcomes(self.outcomes)


def planned_rows(cfg: EvalConfig) -> list[dict[str, Any]]:
    """The (model, attack, eps) rows ``run_eval`` will write, from the specs and the suite alone (nothing loads).

    Gates check their rules against them before any work (``robench.gate.judge.check_planned``).
    """
    settings = engine.settings_of(cfg.run.suite)
    if cfg.worst:
        settings += [(WORST, e) for e in worst.settings_eps(settings)]
    return [{"model": p.label, "attack": a, "eps": e} for p in parse_specs(cfg.models) for a, e in settings]


def run_eval(
    cfg: EvalConfig, progress: Progress | None = None, warn: Callable[[str], None] | None = None,
    dist: Dist = LOCAL, status: Status | None = None, what: str = "eval",
    on_open: Callable[[dict[str, Any]], None] | None = None,
) -> EvalResult | None:
    """Evaluate every model on clean data and under every attack x eps of the suite.

    ``warn`` hears about things that are allowed but rarely meant, such as random weights.
    ``progress`` hears the images done (within a batch too, per attack), ``status`` the stage
    now (health probes, then attack and model), both labelled ``what``.
    Under torchrun (``dist``) each rank takes its shard of the samples; rank 0 gets the
    result, identical sample by sample to a one-process run, and the others get None.
    ``on_open`` hears the dataset record (``dataset`` of the results) as soon as the data opens,
    before any model runs, so a check of the samples (a gate's baseline) costs no evaluation;
    not under ``skip_bad_images``, where the samples are known only at the end.
    """
    opened = open_run(cfg.run, cfg.models, dist, warn)
    health.check_refs(dict(cfg.clean_refs), [m.spec.label for m in opened.models])
    if on_open is not None and not cfg.run.skip_bad_images:
        on_open(dataset_record(opened.source, opened.data, "test"))
    state = _state(cfg, opened, dist)  # before the probes: a state of another run, or one in use, is refused at once
    try:  # the state's lock is released however the run ends
        probed = probe_models(opened, cfg.run, dist, status, what)
        opened.precision = check_precision(opened, cfg.run, warn if dist.is_main else None)
        hooks = engine.Hooks(progress, warn, state, what=what, status=status)
        done = engine.run(engine.Plan.white_box(opened.participants(), cfg.run.target_class), opened.source,
                          cfg.run.suite, cfg.run.seed, cfg.run.batch_size, dist, hooks)
    finally:
        if state:
            state.close()
    if done is None:
        return None
    return _result(cfg, opened, *done, probed)


def _state(cfg: EvalConfig, opened: Opened, dist: Dist) -> RunState | None:
    """The resume state of this run (checked against the folder's), or None without ``resume``."""
    if cfg.resume is None:
        return None
    versions = resume_versions()
    key = fingerprint({
        "command": "eval", "versions": versions, "models": [(m.spec.label, *m.function()) for m in opened.models],
        "ids": opened.source.ids, "classes": opened.source.classes,  # the labels: folder ids do not say them
        "suite": cfg.run.suite.describe()["attacks"], "seed": cfg.run.seed, "amp": cfg.run.amp,
        "cascade": cfg.run.suite.cascade, "early_stop": cfg.run.suite.early_stop,  # they change the outcomes
        "layout": "pairs",  # the engine's outcome layout: states of other layouts are other runs
        # a targeted run's choice of classes (untargeted states keep their fingerprint)
        **({"target_class": cfg.run.target_class} if cfg.run.target_class is not None else {}),
    })
    state = RunState(cfg.resume, key, dist.rank, versions)
    state.check()
    return state


def _spent(out: engine.Matrix) -> dict[str, float]:
    """Per model, the passes per sample its attacks made (forward and backward)."""
    spent: dict[str, float] = {}
    for c in out.costs():
        spent[c["model"]] = spent.get(c["model"], 0.0) + (c["forward_passes"] + c["backward_passes"]) / len(out.ids)
    return spent


def _result(cfg: EvalConfig, opened: Opened, out: engine.Matrix, skipped: dict[int, str],
            probed: Probed) -> EvalResult:
    """Rows, provenance and health of the gathered outcomes."""
    outcomes = out.white_box()
    if cfg.worst:
        outcomes = {label: worst.with_worst(o) for label, o in outcomes.items()}
    rows = pd.concat([metrics.summarize(o, label) for label, o in outcomes.items()], ignore_index=True)
    dataset = dataset_record(opened.source, opened.data, "test", out.ids, skipped, out.content)
    config = {**cfg.describe(), "data": opened.data}  # the data the run used, when RunSpec.data left it to the models
    meta = envelope("eval", config, dataset, [m.describe() for m in opened.models], metrics.DEFINITIONS)
    meta["semantics"] = cfg.run.suite.semantics()
    meta["cost"] = out.costs()
    meta["budget"] = budget_record(cfg.run.suite, opened.source.num_classes, _spent(out))
    meta["precision"] = opened.precision
    meta["robustness_curve"] = {label: worst.robustness_curve(o) for label, o in outcomes.items()}
    meta["probes"] = probed.record()
    survivor_flags, meta["survivor_check"] = survivor_check(
        cfg.run.suite, cfg.survivor_check if cfg.worst else 0, opened, opened.participants(), outcomes, cfg.run)
    flags = [*probed.flags, *survivor_flags, *health.nonfinite_logits(outcomes.items()),
             *health.eval_flags(rows, outcomes, cfg.run.suite, dict(cfg.clean_refs), cfg.clean_ref_tol)]
    meta["health"] = health.records(flags)
    return EvalResult(rows, outcomes, meta, flags)
