"""A dry run: one batch per model and attack, timed, and what the whole run would cost on this device.

Passes per sample are the same on any machine (``robench.engine.passes``); seconds per pass
are this device's. Their product over the run's samples is the estimate: nothing is written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pandas as pd
import torch

from robench import engine
from robench.core.distributed import LOCAL
from robench.engine.batch import Views
from robench.engine.plan import Participant
from robench.engine.runner import views
from robench.run.evaluate import EvalConfig
from robench.run.runspec import open_run

Clock = Callable[[], float]
COLUMNS = ["model", "attack", "passes_per_sample", "seconds_per_sample", "samples", "estimated_seconds"]


def dry_run(cfg: EvalConfig, warn: Callable[[str], None] | None = None,
            clock: Clock = time.perf_counter) -> pd.DataFrame:
    """One row per model and attack (and its clean forward): passes per sample, and the time for all samples.

    ``attrs["device"]`` names the device timed.
    The time is measured on the first batch, after one untimed forward (first calls pay for
    lazy set-up and compiling). Under cascade or early stopping later attacks see fewer samples,
    so the estimate is then an upper bound.
    """
    opened = open_run(cfg.run, cfg.models, LOCAL, warn)  # one process: a dry run times this device alone
    rows: list[dict[str, Any]] = []
    for p in opened.participants():
        first = next(views(opened.source, [p.input], cfg.run.batch_size), None)
        if first is not None:
            rows += _model_rows(p, first, cfg, opened.source.ids, clock)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["device"] = str(opened.device)
    return table


def _model_rows(p: Participant, first: Views, cfg: EvalConfig, ids: list[str], clock: Clock) -> list[dict[str, Any]]:
    """The clean row and one row per attack of one model, timed on ``first``."""
    batch = first[p.input]
    size, device, n = len(batch.rows), _device(p), len(ids)
    x = batch.images.to(device)
    engine.score(p.module, x)  # untimed: lazy set-up, cuDNN's choice of kernels, compiling
    clean = _timed(lambda: engine.score(p.module, x), device, clock)
    rows = [_row(p.label, "clean", 1.0, clean / size, n)]
    plan = engine.Plan.white_box([p])
    for spec in cfg.run.suite.attacks:
        one = dataclasses.replace(cfg.run.suite, attacks=(spec,))
        out = engine.Matrix.empty(ids, engine.settings_of(one), plan.pairs())
        seconds = _timed(partial(engine.run_batches, plan, [first], one, out, cfg.run.seed), device, clock)
        passes = sum(c["forward_passes"] + c["backward_passes"] for c in out.costs()) / size
        rows.append(_row(p.label, spec.id, passes, max(seconds - clean, 0.0) / size, n))
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
