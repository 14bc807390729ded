"""White-box sweeps: each model attacked with its own gradients across attacks x eps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robench import engine, health, metrics, probes, samples
from robench.data import Batch, Source, open_source
from robench.distributed import LOCAL, Dist, gather, resolve_device, shard
from robench.errors import RobenchError
from robench.models import LoadedModel, load_model, parse_spec
from robench.provenance import dataset_record, envelope, merge_skipped, plain_config
from robench.resume import RunState, fingerprint
from robench.suite import Suite, load_suite

Progress = Callable[[str, int, int], None]  # (model label, images done, images total)


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides the numbers of an eval run."""

    models: tuple[str, ...] = ()  # empty: the zoo's default pair (a baseline and a step_ll model)
    data: str = "digits"
    suite: Suite = field(default_factory=load_suite)
    limit: int | None = None
    seed: int = 0
    batch_size: int = 100
    device: str = "auto"
    pretrained: bool = False
    workers: int = 0
    skip_bad_images: bool = False  # leave unreadable images out (recorded in the results) instead of failing
    resume: Path | None = None  # state folder: finished batches are kept there, and taken from there
    health_probes: bool = True  # probe each model on its first batch (robench.health); results are checked anyway
    clean_refs: tuple[tuple[str, float], ...] = ()  # (label, expected clean top-1): checked against the result
    clean_ref_tol: float | None = None  # allowed |clean top-1 - reference|; None: the exact 95% interval for n

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return plain_config(self)


@dataclass
class EvalResult:
    """Tidy rows (one per model x attack x eps), per-sample outcomes, and provenance."""

    rows: pd.DataFrame
    outcomes: dict[str, engine.Outcomes]
    meta: dict[str, Any]
    health: list[health.Flag] = field(default_factory=list)  # also in meta["health"], as records

    def per_sample(self) -> pd.DataFrame:
        """Tidy per-sample rows for every model."""
        return pd.concat([metrics.per_sample(o, m) for m, o in self.outcomes.items()], ignore_index=True)

    def packed_samples(self) -> dict[str, Any]:
        """Packed per-sample top-1/top-5 correctness, one record per row (for results files)."""
        return samples.from_outcomes(self.outcomes)


def load_models(specs: tuple[str, ...], source: Source, pretrained: bool, device: torch.device) -> list[LoadedModel]:
    """Load every model and check it fits the dataset; an empty tuple gives the default model."""
    if not specs:
        from robench.zoo import DEFAULT

        specs = tuple(f"zoo:{name}" for name in DEFAULT)
    parsed = [parse_spec(s) for s in specs]
    labels = [p.label for p in parsed]
    dup = next((lb for lb in labels if labels.count(lb) > 1), None)
    if dup:
        raise RobenchError(f"two models are labelled '{dup}'; name them apart with LABEL=SPEC")
    models = [load_model(p, source.num_classes, pretrained, device) for p in parsed]
    for m in models:
        if m.num_classes != source.num_classes:
            raise RobenchError(
                f"model '{m.spec.label}' has {m.num_classes} classes but {source.name} has {source.num_classes}; "
                f"give a checkpoint trained on this dataset (NAME@CHECKPOINT)"
            )
    return models


def run_eval(
    cfg: EvalConfig, progress: Progress | None = None, warn: Callable[[str], None] | None = None,
    dist: Dist = LOCAL,
) -> EvalResult | None:
    """Evaluate every model on clean data and under every attack x eps of the suite.

    ``warn`` hears about things that are allowed but rarely meant, such as random weights.
    Under torchrun (``dist``) each rank takes its shard of the samples; rank 0 gets the
    result, identical sample by sample to a one-process run, and the others get None.
    """
    torch.manual_seed(cfg.seed)
    device = dist.device if dist.is_distributed else resolve_device(cfg.device)
    source = open_source(cfg.data, "test", cfg.limit, cfg.seed, cfg.workers, cfg.skip_bad_images)
    models = load_models(cfg.models, source, cfg.pretrained, device)
    for m in models:
        if m.weights == "random" and warn is not None:
            warn(f"model '{m.spec.label}' has random weights (no checkpoint and no --pretrained)")
    health.check_refs(dict(cfg.clean_refs), [m.spec.label for m in models])
    probes = probe_models(models, source, cfg.batch_size) if cfg.health_probes and dist.is_main else []
    state = _state(cfg, source, models, dist)
    mine = shard(len(source.ids), dist).numpy()
    prior = state.load() if state else {}
    try:
        parts = {m.spec.label: _evaluate_model(m, source, cfg, mine, prior.get(m.spec.label, []), state, progress,
                                               warn).part(mine) for m in models}
    finally:
        if state:
            state.close()
    gathered = gather((parts, source.skipped), dist)
    if gathered is None:
        return None
    return _result(cfg, source, models, gathered, warn, probes)


def probe_models(models: list[LoadedModel], source: Source, batch_size: int) -> list[health.Flag]:
    """The health probes of every model, on its first batch."""
    flags = []
    for m in models:
        first = next(iter(source.batches(m.input, batch_size)), None)
        if first is not None:
            flags += probes.probe(m.module, first.images, first.labels, m.spec.label)
    return flags


def _state(cfg: EvalConfig, source: Source, models: list[LoadedModel], dist: Dist) -> RunState | None:
    """The resume state of this run (checked against the folder's), or None without --resume."""
    if cfg.resume is None:
        return None
    key = fingerprint({
        "command": "eval", "models": [(m.spec.label, m.weights_sha256) for m in models],
        "ids": source.ids, "suite": cfg.suite.describe()["attacks"], "seed": cfg.seed,
    })
    state = RunState(cfg.resume, key, dist.rank)
    state.check()
    return state


def _evaluate_model(m: LoadedModel, source: Source, cfg: EvalConfig, mine: np.ndarray, prior: list[dict],
                    state: RunState | None, progress: Progress | None,
                    warn: Callable[[str], None] | None) -> engine.Outcomes:
    """One model over this rank's samples, taking finished ones from ``prior`` and recording new ones."""
    out = engine.Outcomes.empty(source.ids, engine.settings_of(cfg.suite))
    for part in prior:
        out.fill(part)
    todo = mine[out.labels[mine] < 0]
    done = [len(mine) - len(todo)]

    def on_batch(batch: Batch) -> None:
        if state is not None:
            state.append(m.spec.label, out.part(batch.rows.numpy()))
        done[0] += len(batch.rows)
        if progress is not None:
            progress(m.spec.label, done[0], len(mine))

    batches = source.batches(m.input, cfg.batch_size, torch.from_numpy(todo))
    return engine.evaluate(m.module, batches, source.ids, cfg.suite, cfg.seed, on_batch, out, warn)


def _result(cfg: EvalConfig, source: Source, models: list[LoadedModel], gathered: list,
            warn: Callable[[str], None] | None, probes: list[health.Flag]) -> EvalResult:
    """Every rank's parts assembled; unreadable images left out and recorded; rows and provenance."""
    skipped = merge_skipped([bad for _, bad in gathered])
    outcomes = {}
    for m in models:
        out = engine.Outcomes.empty(source.ids, engine.settings_of(cfg.suite))
        for parts, _ in gathered:
            out.fill(parts[m.spec.label])
        outcomes[m.spec.label] = out
    keep = np.array([r for r in range(len(source.ids)) if r not in skipped], dtype=np.int64)
    if skipped:
        outcomes = {label: o.subset(keep) for label, o in outcomes.items()}
    _report_nonfinite(outcomes, warn)
    tables = [metrics.summarize(o, label) for label, o in outcomes.items()]
    dataset = dataset_record(source, cfg.data, "test", [source.ids[r] for r in keep], skipped)
    meta = envelope("eval", cfg.describe(), dataset, [m.describe() for m in models], metrics.DEFINITIONS)
    rows = pd.concat(tables, ignore_index=True)
    flags = [*probes, *health.eval_flags(rows, outcomes, cfg.suite, dict(cfg.clean_refs), cfg.clean_ref_tol)]
    meta["health"] = health.records(flags)
    return EvalResult(rows, outcomes, meta, flags)


def _report_nonfinite(outcomes: dict[str, engine.Outcomes], warn: Callable[[str], None] | None) -> None:
    """One warning per model whose logits were NaN or inf somewhere (those samples count as wrong)."""
    for label, out in outcomes.items():
        bad = out.nonfinite()
        if bad.any() and warn is not None:
            where = ", ".join(f"{a} eps {e:g}: {n}" if a != engine.CLEAN else f"clean: {n}"
                              for (a, e), n in zip(out.settings, bad, strict=True) if n)
            warn(f"model '{label}' gave NaN or inf logits ({where} samples); they count as wrong")
