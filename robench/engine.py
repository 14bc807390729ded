"""The evaluation engine: one pass over the data per model, every attack x eps per batch.

Per batch the clean forward runs once (under inference_mode) and gives top-1,
top-5, the prediction and the least-likely class; then each attack crafts its
examples for all its eps values and each is scored once. Only per-sample
outcomes are kept (a few bytes per sample per setting), so memory is O(batch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from robench.attacks import REGISTRY, Labels, attack_mode
from robench.attacks.base import SampleNoise
from robench.data import Batch
from robench.suite import Suite

CLEAN = "clean"


@dataclass
class Outcomes:
    """Per-sample outcomes of one model: setting s, sample i -> prediction and top-5 hit."""

    ids: list[str]
    labels: np.ndarray  # [N] int64
    settings: list[tuple[str, float]]  # (attack id, eps); settings[0] is ("clean", 0.0)
    pred: np.ndarray  # [S, N] int32 top-1 prediction
    top5: np.ndarray  # [S, N] bool: label among the top 5

    @classmethod
    def empty(cls, ids: list[str], settings: list[tuple[str, float]]) -> Outcomes:
        n, s = len(ids), len(settings)
        return cls(
            ids=ids, labels=np.full(n, -1, dtype=np.int64), settings=settings,
            pred=np.full((s, n), -1, dtype=np.int32), top5=np.zeros((s, n), dtype=bool),
        )

    def record(self, setting: int, rows: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Store top-1 prediction and top-5 hit for these rows."""
        k = min(5, logits.shape[1])
        hit5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1)
        r = rows.numpy()
        self.pred[setting, r] = logits.argmax(1).cpu().numpy()
        self.top5[setting, r] = hit5.cpu().numpy()


def settings_of(suite: Suite) -> list[tuple[str, float]]:
    """Clean first, then every (attack id, eps) in suite order."""
    return [(CLEAN, 0.0)] + [(a.id, float(e)) for a in suite.attacks for e in a.eps]


def score(model: nn.Module, x: Tensor) -> Tensor:
    """Logits for evaluation: inference_mode, returned as a normal tensor."""
    with torch.inference_mode():
        logits = model(x)
    return logits.clone()


def attack_noise(seed: int, attack_id: str, ids: list[str]) -> SampleNoise:
    """Randomness for one attack (PGD's start) on these samples, reproducible and independent.

    Each sample's stream is seeded by (seed, attack id, sample id), so its examples do not
    depend on the batch size, the batch it falls in, the torchrun rank that runs it, or
    which other attacks ran (or came from a cache) before.
    """
    def stream(sample_id: str) -> int:
        digest = hashlib.blake2b(f"{seed}\0{attack_id}\0{sample_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    return SampleNoise(tuple(stream(i) for i in ids))


def run_batch(model: nn.Module, batch: Batch, suite: Suite, out: Outcomes, seed: int) -> None:
    """Clean forward once, then every attack x eps, recorded into ``out``."""
    device = next(model.parameters()).device
    x, y = batch.images.to(device), batch.labels.to(device)
    logits = score(model, x)
    out.labels[batch.rows.numpy()] = batch.labels.numpy()
    out.record(0, batch.rows, logits, y)
    labels = Labels.from_logits(logits, y)
    ids = [out.ids[r] for r in batch.rows.tolist()]
    setting = 1
    for spec in suite.attacks:
        attack, rng = REGISTRY[spec.name], attack_noise(seed, spec.id, ids)
        for _, x_adv in attack.run(model, x, labels, spec.eps, spec.config, rng):
            out.record(setting, batch.rows, score(model, x_adv), y)
            setting += 1


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    ids: list[str],
    suite: Suite,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> Outcomes:
    """Run the suite over all batches; the model's mode and parameter flags are restored after."""
    out = Outcomes.empty(ids, settings_of(suite))
    with attack_mode(model):
        for batch in batches:
            run_batch(model, batch, suite, out, seed)
            if on_batch is not None:
                on_batch(len(batch.rows))
    return out
