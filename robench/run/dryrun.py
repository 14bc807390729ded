"""A dry run: one batch per model and attack, timed, and what the whole run would cost on this device.

Passes per sample are the same on any machine (``robench.engine.passes``); seconds per pass
are this device's. Their product over the run's samples is the estimate: nothing is written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robench import engine
from robench.attacks.suite import Suite
from robench.core.distributed import LOCAL
from robench.engine.batch import Views
from robench.engine.plan import Participant, Plan
from robench.engine.runner import views
from robench.models import LoadedModel
from robench.run.evaluate import EvalConfig
from robench.run.runspec import Opened, RunSpec, open_run
from robench.run.store import ExampleCache, check_space, header_key_bytes, human_bytes, store_bytes
from robench.run.survivors import planned_passes
from robench.run.transfer import TransferConfig, _pick, check_amp_cache, full_strength
from robench.run.transfer import plan as transfer_plan

Clock = Callable[[], float]
SURVIVOR_ROW = "survivor check (upper bound)"  # the attack column of the survivor check's row
COLUMNS = ["model", "attack", "passes_per_sample", "seconds_per_sample", "samples", "estimated_seconds"]


def dry_run(cfg: EvalConfig, warn: Callable[[str], None] | None = None,
            clock: Clock = time.perf_counter) -> pd.DataFrame:
    """One row per model and attack (and its clean forward): passes per sample, and the time for all samples.

    ``attrs["device"]`` names the device timed.
    The time is measured on the first batch, after one untimed forward (first calls pay for
    lazy set-up and compiling). Under cascade or early stopping later attacks see fewer samples,
    so the estimate is then an upper bound. When the survivor check would run
    (``robench.run.survivors``), each model gets a row ``SURVIVOR_ROW`` for it, also an upper bound.
    """
    opened = open_run(cfg.run, cfg.models, LOCAL, warn)  # one process: a dry run times this device alone
    table = _estimate(opened, [Plan.white_box([p], cfg.run.target_class) for p in opened.participants()], cfg.run,
                      clock)
    return _with_survivor_check(table, cfg.run.suite, cfg.survivor_check if cfg.worst else 0, opened,
                                [p.label for p in opened.participants()])


def dry_run_transfer(cfg: TransferConfig, warn: Callable[[str], None] | None = None,
                     clock: Clock = time.perf_counter) -> pd.DataFrame:
    """``dry_run`` for a transfer matrix: a row per source and attack, its examples scored on all its targets.

    An attack row's time is crafting on the source plus scoring on every target (each model's
    clean forward is its own row). ``attrs["store"]`` says the bytes of the example store: with
    a ``cache``, what the real run would say before its work, refusing a disk without them;
    without one, what a store of this run would take. Nothing is written, the store included.
    The survivor check's row, when it would run, is per source (its white-box diagonal).
    """
    check_amp_cache(cfg)
    opened = open_run(cfg.run, cfg.models, LOCAL, warn)
    sources, targets = _pick(opened.models, cfg.sources, "sources"), _pick(opened.models, cfg.targets, "targets")
    suite = full_strength(cfg.run.suite, warn)
    whole = transfer_plan(opened, sources, targets, cfg.run.target_class)
    plans = [Plan(tuple(whole.model(label) for label in dict.fromkeys([s, *t])), {s: t}, whole.deliver, whole.aim)
             for s, t in whole.targets.items()]
    store = _store_line(cfg.cache, opened, sources, suite, cfg.run)  # a disk without it: refused before timing
    table = _estimate(opened, plans, dataclasses.replace(cfg.run, suite=suite), clock)
    table = _with_survivor_check(table, cfg.run.suite, cfg.survivor_check, opened, list(whole.targets))
    table.attrs["store"] = store
    return table


def _with_survivor_check(table: pd.DataFrame, suite: Suite, most: int, opened: Opened,
                         models: list[str]) -> pd.DataFrame:
    """``table`` and, when the survivor check would run, a row for it per model of ``models`` (an upper bound).

    Its passes per sample are ``survivors.planned_passes`` (every eps's worst row, each of its
    checked samples a survivor no step fools), its samples ``most`` or all there are, fewer, and its
    seconds per pass the model's own over its timed rows (the clean forward a pass; a transfer
    source's attack rows score its examples on the targets too, so they overstate it).
    """
    n = min(most, len(opened.source.ids))
    passes = planned_passes(suite, most, opened.source.num_classes)
    if not passes or not n or table.empty:
        return table
    rows = []
    for model in models:
        own = table[table.model == model]
        per_pass = float(own.seconds_per_sample.sum()) / float(own.passes_per_sample.sum())
        rows.append(_row(model, SURVIVOR_ROW, float(passes), per_pass * passes, n))
    out = pd.concat([table, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
    out.attrs = dict(table.attrs)
    return out


def _store_line(root: Path | None, opened: Opened, sources: list[LoadedModel], suite: Suite, run: RunSpec) -> str:
    """The example store's bytes, as the real run would say them (and refuse a disk without them)."""
    ids = opened.source.ids
    if root is None:
        full = store_bytes(None, sources, suite, header_key_bytes(ids), len(ids))[0]
        return f"no example store (cache not set); one for this run would take {human_bytes(full)}"
    heard: list[str] = []
    check_space(ExampleCache(root, opened.models, run.seed, opened.source.classes, target_class=run.target_class),
                sources, suite, ids, heard.append)
    return heard[0]


def _estimate(opened: Opened, plans: list[Plan], run: RunSpec, clock: Clock) -> pd.DataFrame:
    """Each plan timed on the run's first batch: its models' clean rows (once each), then its sources' attacks."""
    participants = opened.participants()
    first = next(views(opened.source, list(dict.fromkeys(p.input for p in participants)), run.batch_size), None)
    rows: list[dict[str, Any]] = []
    if first is not None:
        clean: dict[str, float] = {}
        for plan in plans:
            for p in plan.models:
                if p.label not in clean:
                    clean[p.label] = _clean(p, first, clock)
                    rows.append(_row(p.label, "clean", 1.0, clean[p.label], len(opened.source.ids)))
            rows += _attack_rows(plan, first, run, opened.source.ids, sum(clean[p.label] for p in plan.models), clock)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["device"] = str(opened.device)
    return table


def _clean(p: Participant, first: Views, clock: Clock) -> float:
    """Seconds per sample of one model's clean forward on the first batch."""
    batch = first[p.input]
    device = _device(p)
    x = batch.images.to(device)
    engine.score(p.module, x)  # untimed: lazy set-up, cuDNN's choice of kernels, compiling
    return _timed(lambda: engine.score(p.module, x), device, clock) / len(batch.rows)


def _attack_rows(plan: Plan, first: Views, run: RunSpec, ids: list[str], clean: float,
                 clock: Clock) -> list[dict[str, Any]]:
    """One row per attack of the plan's source, timed on ``first`` less the clean forwards (``clean`` s/sample)."""
    (source,) = plan.targets
    size, device = len(next(iter(first.values())).rows), _device(plan.model(source))
    rows = []
    for spec in run.suite.attacks:
        one = dataclasses.replace(run.suite, attacks=(spec,))
        out = engine.Matrix.empty(ids, engine.settings_of(one), plan.pairs())
        seconds = _timed(partial(engine.run_batches, plan, [first], one, out, run.seed), device, clock)
        passes = sum(c["forward_passes"] + c["backward_passes"] for c in out.costs()) / size
        rows.append(_row(source, spec.id, passes, max(seconds / size - clean, 0.0), len(ids)))
    return rows


def _row(model: str, attack: str, passes: float, per_sample: float, n: int) -> dict[str, Any]:
    return {"model": model, "attack": attack, "passes_per_sample": passes, "seconds_per_sample": per_sample,
            "samples": n, "estimated_seconds": per_sample * n}


def _timed(work: Callable[[], object], device: torch.device, clock: Clock) -> float:
    """Seconds ``work`` takes, waiting for the GPU to finish it."""
    start = clock()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def _device(p: Participant) -> torch.device:
    first = next(p.module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
