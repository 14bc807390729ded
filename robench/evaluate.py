"""White-box sweeps: each model attacked with its own gradients across attacks x eps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from robench import engine, metrics, samples
from robench.data import Source, open_source
from robench.errors import RobenchError
from robench.models import LoadedModel, load_model, parse_spec
from robench.provenance import dataset_record, envelope, plain_config
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

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return plain_config(self)


@dataclass
class EvalResult:
    """Tidy rows (one per model x attack x eps), per-sample outcomes, and provenance."""

    rows: pd.DataFrame
    outcomes: dict[str, engine.Outcomes]
    meta: dict[str, Any]

    def per_sample(self) -> pd.DataFrame:
        """Tidy per-sample rows for every model."""
        return pd.concat([metrics.per_sample(o, m) for m, o in self.outcomes.items()], ignore_index=True)

    def packed_samples(self) -> dict[str, Any]:
        """Packed per-sample top-1/top-5 correctness, one record per row (for results files)."""
        return samples.from_outcomes(self.outcomes)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RobenchError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobenchError(f"device '{device}' asked for, but no CUDA GPU is available; use --device cpu")
    return dev


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
    cfg: EvalConfig, progress: Progress | None = None, warn: Callable[[str], None] | None = None
) -> EvalResult:
    """Evaluate every model on clean data and under every attack x eps of the suite.

    ``warn`` hears about things that are allowed but rarely meant, such as random weights.
    """
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    source = open_source(cfg.data, "test", cfg.limit, cfg.seed, cfg.workers)
    models = load_models(cfg.models, source, cfg.pretrained, device)
    for m in models:
        if m.weights == "random" and warn is not None:
            warn(f"model '{m.spec.label}' has random weights (no checkpoint and no --pretrained)")
    tables, outcomes = [], {}
    for m in models:
        done = [0]

        def tick(n: int, label: str = m.spec.label, done: list[int] = done) -> None:
            done[0] += n
            if progress is not None:
                progress(label, done[0], len(source.ids))

        out = engine.evaluate(m.module, source.batches(m.input, cfg.batch_size), source.ids, cfg.suite, cfg.seed, tick)
        outcomes[m.spec.label] = out
        tables.append(metrics.summarize(out, m.spec.label))
    meta = envelope("eval", cfg.describe(), dataset_record(source, cfg.data, "test"),
                    [m.describe() for m in models], metrics.DEFINITIONS)
    return EvalResult(pd.concat(tables, ignore_index=True), outcomes, meta)
