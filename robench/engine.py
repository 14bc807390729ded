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
NONFINITE = -2  # the prediction recorded for NaN/inf logits: never a label, so never counted correct


@dataclass
class Outcomes:
    """Per-sample outcomes of one model: setting s, sample i -> prediction and top-5 hit."""

    ids: list[str]
    labels: np.ndarray  # [N] int64
    settings: list[tuple[str, float]]  # (attack id, eps); settings[0] is ("clean", 0.0)
    pred: np.ndarray  # [S, N] int32 top-1 prediction
    top5: np.ndarray  # [S, N] bool: label among the top 5
    least_likely: np.ndarray | None = None  # [N] int32: least-likely class of the clean logits
    linf: np.ndarray | None = None  # [S, N] float32: ||x_adv - x||_inf in 1/255 units (0 when clean)

    def __post_init__(self) -> None:
        s, n = self.pred.shape
        if self.least_likely is None:
            self.least_likely = np.full(n, -1, dtype=np.int32)
        if self.linf is None:
            self.linf = np.zeros((s, n), dtype=np.float32)

    @classmethod
    def empty(cls, ids: list[str], settings: list[tuple[str, float]]) -> Outcomes:
        n, s = len(ids), len(settings)
        return cls(
            ids=ids, labels=np.full(n, -1, dtype=np.int64), settings=settings,
            pred=np.full((s, n), -1, dtype=np.int32), top5=np.zeros((s, n), dtype=bool),
        )

    def record(self, setting: int, rows: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Store top-1 prediction and top-5 hit for these rows; NaN/inf logits count as wrong."""
        r = rows.numpy()
        self.pred[setting, r], self.top5[setting, r] = predictions(logits, labels)

    def record_linf(self, setting: int, rows: Tensor, x_adv: Tensor, x: Tensor) -> None:
        """Store each row's ||x_adv - x||_inf in 1/255 units (one reduction per scored batch)."""
        self.linf[setting, rows.numpy()] = linf_255(x_adv, x)

    def part(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """These rows' outcomes, for a resume file or another rank."""
        return {"rows": rows, "labels": self.labels[rows], "pred": self.pred[:, rows], "top5": self.top5[:, rows],
                "least_likely": self.least_likely[rows], "linf": self.linf[:, rows]}

    def fill(self, part: dict[str, np.ndarray]) -> None:
        """Take in rows' outcomes made elsewhere (by ``part``)."""
        rows = np.asarray(part["rows"], dtype=np.int64)
        self.labels[rows], self.pred[:, rows], self.top5[:, rows] = part["labels"], part["pred"], part["top5"]
        if "linf" in part:  # parts written before these were recorded keep the defaults
            self.least_likely[rows], self.linf[:, rows] = part["least_likely"], part["linf"]

    def subset(self, rows: np.ndarray) -> Outcomes:
        """Only these rows, in this order (e.g. leaving out images that could not be read)."""
        return Outcomes([self.ids[r] for r in rows], self.labels[rows], self.settings, self.pred[:, rows],
                        self.top5[:, rows], self.least_likely[rows], self.linf[:, rows])

    def nonfinite(self) -> np.ndarray:
        """[S] how many samples gave NaN or inf logits, per setting."""
        return (self.pred == NONFINITE).sum(1)


def linf_255(x_adv: Tensor, x: Tensor) -> np.ndarray:
    """Each sample's ||x_adv - x||_inf in 1/255 units, the unit of eps."""
    return ((x_adv - x).abs().flatten(1).amax(1) * 255).float().cpu().numpy()


def predictions(logits: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and top-5 hits; a row with NaN or inf logits gets NONFINITE and no hit."""
    k = min(5, logits.shape[1])
    finite = torch.isfinite(logits).all(1)
    hit5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1) & finite
    return torch.where(finite, logits.argmax(1), NONFINITE).cpu().numpy(), hit5.cpu().numpy()


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
    out.least_likely[batch.rows.numpy()] = labels.least_likely.cpu().numpy()
    ids = [out.ids[r] for r in batch.rows.tolist()]
    setting = 1
    for spec in suite.attacks:
        attack, rng = REGISTRY[spec.name], attack_noise(seed, spec.id, ids)
        for _, x_adv in attack.run(model, x, labels, spec.eps, spec.config, rng):
            out.record(setting, batch.rows, score(model, x_adv), y)
            out.record_linf(setting, batch.rows, x_adv, x)
            setting += 1


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's (and other back ends') out-of-memory errors."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error).lower() for m in ("out of memory", "can't allocate"))
    )


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(batch.images[start:stop], batch.labels[start:stop], batch.rows[start:stop])


def run_batch_fitting(model: nn.Module, batch: Batch, suite: Suite, out: Outcomes, seed: int, size: int,
                      warn: Callable[[str], None] | None = None) -> int:
    """``run_batch`` in pieces of at most ``size`` samples, halving ``size`` on out-of-memory.

    Every sample's result is the same at any size (summed losses, per-sample noise), so a
    retry changes nothing but the time. Returns the size that fitted, for the next batch.
    """
    start = 0
    while start < len(batch.rows):
        try:
            run_batch(model, _slice(batch, start, start + size), suite, out, seed)
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


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    ids: list[str],
    suite: Suite,
    seed: int = 0,
    on_batch: Callable[[Batch], None] | None = None,
    out: Outcomes | None = None,
    warn: Callable[[str], None] | None = None,
) -> Outcomes:
    """Run the suite over all batches; the model's mode and parameter flags are restored after.

    ``out`` may hold rows done earlier (a resumed run); ``on_batch`` hears of each finished batch.
    """
    out = Outcomes.empty(ids, settings_of(suite)) if out is None else out
    size = None
    with attack_mode(model):
        for batch in batches:
            size = run_batch_fitting(model, batch, suite, out, seed, size or len(batch.rows), warn)
            if on_batch is not None:
                on_batch(batch)
    return out
