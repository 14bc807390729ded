"""Running a plan over the data: batch by batch, halved on out-of-memory, resumed, gathered across ranks.

Also ``evaluate``, the white-box sweep of one module without a plan.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robench.attacks import attack_mode
from robench.attacks.suite import Suite
from robench.core.distributed import LOCAL, Dist, gather, shard
from robench.data import Batch, InputConfig, Source
from robench.engine.batch import Views, _Batch
from robench.engine.hooks import Hooks, Tracker, Warn
from robench.engine.outcomes import Matrix, Outcomes, settings_of
from robench.engine.plan import Participant, Plan


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's (and other back ends') out-of-memory errors."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error).lower() for m in ("out of memory", "can't allocate"))
    )


def _slice(views: Views, start: int, stop: int) -> Views:
    return {c: Batch(b.images[start:stop], b.labels[start:stop], b.rows[start:stop], b.content[start:stop])
            for c, b in views.items()}


def run_views_fitting(step: Callable[[Views], None], views: Views, size: int, warn: Warn | None = None) -> int:
    """``step`` on pieces of at most ``size`` samples, halving ``size`` on out-of-memory.

    Every sample's result is the same at any size (summed losses, per-sample noise), so a
    retry changes nothing but the time. Returns the size that fitted, for the next batch.
    """
    start, n = 0, len(next(iter(views.values())).rows)
    while start < n:
        try:
            step(_slice(views, start, start + size))
        except Exception as e:  # noqa: BLE001 - only out-of-memory is retried; the rest re-raised
            if not is_out_of_memory(e) or size == 1:
                raise
            size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if warn is not None:
                warn(f"out of memory on a batch of {2 * size}; retrying with batch size {size}")
            continue
        start += size
    return size


def views(source: Source, configs: list[InputConfig], batch_size: int, order: Tensor | None = None) -> Iterator[Views]:
    """The same samples (``order``: these rows), batch by batch, as each distinct input config sees them."""
    iterators = {c: source.batches(c, batch_size, order) for c in configs}
    for batches in zip(*iterators.values(), strict=True):
        yield dict(zip(iterators, batches, strict=True))


def run_batches(plan: Plan, batches: Iterable[Views], suite: Suite, out: Matrix, seed: int = 0,
                hooks: Hooks | None = None) -> Matrix:
    """Run the plan over these batches into ``out``; every model's mode and parameter flags are restored after."""
    hooks = hooks or Hooks()
    if (suite.cascade or suite.early_stop) and any(t != (s,) for s, t in plan.targets.items()):
        raise ValueError("cascade and early_stop are for white-box runs: every source its own only target")
    for s in plan.targets:  # every attack has a cost entry, 0 passes where no sample needed it
        for spec in suite.attacks:
            out.cost.setdefault(json.dumps([s, spec.id]), [0, 0])
    size, done = None, int(out.done(np.arange(len(out.ids))).sum())
    if hooks.progress is not None:  # the start: a rate counts from here, not from the first finished batch
        hooks.progress(hooks.what, done, len(out.ids))
    with ExitStack() as stack:
        for module in {id(m.module): m.module for m in plan.models}.values():
            stack.enter_context(attack_mode(module))
        for v in batches:
            rows, content = next(iter(v.values())).rows, next(iter(v.values())).content
            for r, digest in zip(rows.tolist(), content or ("",) * len(rows), strict=True):  # (): not known
                out.content[r] = digest
            tracker = Tracker(hooks, done, len(out.ids), len(plan.targets) * len(suite.attacks))
            size = run_views_fitting(partial(_piece, plan, suite, out, seed, hooks, tracker=tracker),
                                     v, size or len(rows), hooks.warn)
            if hooks.state is not None:
                hooks.state.append(out.part(rows.numpy()))
            done += len(rows)
            if hooks.progress is not None and not tracker.steps:  # else its last attack's report said so
                hooks.progress(hooks.what, done, len(out.ids))
    return out


def _piece(plan: Plan, suite: Suite, out: Matrix, seed: int, hooks: Hooks, piece: Views, tracker: Tracker) -> None:
    """One piece of a batch (all of it unless out of memory split it), its progress tracked."""
    tracker.start_piece()
    _Batch(plan, suite, out, seed, hooks, piece, tracker).run()
    tracker.finished_piece(len(next(iter(piece.values())).rows))


def run(plan: Plan, source: Source, suite: Suite, seed: int, batch_size: int, dist: Dist = LOCAL,
        hooks: Hooks | None = None) -> tuple[Matrix, dict[int, str]] | None:
    """The whole run: this rank's shard (less what the resume state holds), gathered on rank 0.

    Returns the outcomes of every sample and the unreadable images left out (row -> name),
    or None on torchrun ranks other than 0. Every sample's outcome is the same at any batch
    size and world size.
    """
    hooks = hooks or Hooks()
    out = Matrix.empty(source.ids, settings_of(suite), plan.pairs())
    mine = shard(len(source.ids), dist).numpy()
    if hooks.state:
        _resume(out, hooks.state.load(hooks.warn), source, mine, hooks.warn)
        resumed = int(out.done(mine).sum())
        if resumed and hooks.warn is not None:
            hooks.warn(f"resuming: {resumed} of {len(mine)} samples from {hooks.state.folder}"
                       + ("" if dist.world_size == 1 else f" (rank {dist.rank})"))
    todo = torch.from_numpy(mine[~out.done(mine)])
    run_batches(plan, views(source, plan.configs(), batch_size, todo), suite, out, seed, hooks)
    gathered = gather((out.part(mine), source.skipped), dist)
    if gathered is None:
        return None
    for part, _ in gathered[1:]:
        out.fill(part)
    out.crafted = sum(part["crafted"] for part, _ in gathered)
    out.cost = _summed_costs([part["cost"] for part, _ in gathered])
    skipped = merge_skipped([bad for _, bad in gathered])
    if skipped:
        out = out.subset(np.array([r for r in range(len(source.ids)) if r not in skipped], dtype=np.int64))
    if hooks.warn:
        for line in out.nonfinite_lines():
            hooks.warn(line)
    return out, skipped


def _resume(out: Matrix, parts: list[dict[str, Any]], source: Source, mine: np.ndarray, warn: Warn | None) -> None:
    """Take in a resume state's outcomes of this rank's rows whose content is what the data holds now.

    A sample whose image changed under the same id (another folder of the same file names, a
    re-encoded file) or whose state has no content hash (an older robench) is computed again,
    never reused: one warning counts them.
    """
    wanted = set(mine.tolist())
    resumed = sorted({r for p in parts for r in np.asarray(p["rows"]).tolist() if r in wanted})
    now = dict(zip(resumed, source.content(resumed), strict=True))
    stale: set[int] = set()
    for part in parts:
        rows = np.asarray(part["rows"], dtype=np.int64)
        kept = part.get("content") or [""] * len(rows)
        keep = np.array([r in now and bool(c) and c == now[r] for r, c in zip(rows.tolist(), kept, strict=True)],
                        dtype=bool)
        stale |= {r for r, k in zip(rows.tolist(), keep, strict=True) if r in now and not k}
        out.fill(part, keep)
    stale -= {r for r in stale if out.done(np.array([r]))[0]}
    if stale and warn is not None:
        warn(f"{len(stale)} samples of the resume state hold other content than the data now (the same ids, other "
             f"images, e.g. {source.ids[min(stale)]}); they are computed again")


def _summed_costs(costs: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    """Every rank's costs, added up."""
    total: dict[str, list[int]] = {}
    for cost in costs:
        for key, values in cost.items():
            total[key] = [a + b for a, b in zip(total.get(key, [0, 0]), values, strict=True)]
    return total


def merge_skipped(parts: list[dict[int, str]]) -> dict[int, str]:
    """The unreadable images every rank left out (row -> file)."""
    return {row: name for part in parts for row, name in part.items()}


def evaluate(model: nn.Module, batches: Iterable[Batch], ids: list[str], suite: Suite, seed: int = 0,
             warn: Warn | None = None) -> Outcomes:
    """White-box sweep of one model (any nn.Module taking [0, 1] pixels) over these batches.

    ``batches`` yield [0, 1] images shaped [B, C, H, W] with labels and rows into ``ids``.
    Returns outcomes shaped [settings, N]; the model's mode and parameter flags are restored.
    """
    plan = Plan.white_box([Participant("model", model, InputConfig())])
    config = plan.models[0].input
    out = Matrix.empty(ids, settings_of(suite), plan.pairs())
    run_batches(plan, ({config: b} for b in batches), suite, out, seed, Hooks(warn=warn))
    return out.pairs[("model", "model")]
