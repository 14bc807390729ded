"""Black-box transfer: examples crafted on each source, scored on every target.

Examples are crafted once per (source, attack, eps) and scored on all targets; each
model's clean forward runs once per batch. Sources and targets may differ in input
size and normalization: an example reaches a target as the source's perturbation
(x_adv - x, at the source's resolution) resized to the target's resolution with
bilinear interpolation (a convex combination, so ||delta||_inf <= eps still holds),
added to the target's own clean input and clipped to [0, 1]. With a zero perturbation
this is exactly the target's clean input, so its clean accuracy is unchanged; when the
two input configs are equal the source's example is used as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from robench import health, metrics
from robench.attacks import REGISTRY, Labels, attack_mode
from robench.attacks.base import to_unit
from robench.data import Batch, InputConfig, ids_sha256, open_source
from robench.distributed import LOCAL, Dist, gather, resolve_device, shard
from robench.engine import CLEAN, NONFINITE, Outcomes, attack_noise, linf_255, predictions, score, settings_of
from robench.errors import RobenchError
from robench.evaluate import load_models, probe_models
from robench.models import LoadedModel
from robench.provenance import dataset_record, envelope, merge_skipped, plain_config
from robench.suite import AttackSpec, Suite, load_suite

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TransferConfig:
    """Everything that decides the numbers of a transfer-matrix run."""

    models: tuple[str, ...]
    sources: tuple[str, ...] | None = None  # labels; None means every model
    targets: tuple[str, ...] | None = None
    data: str = "digits"
    suite: Suite = field(default_factory=load_suite)
    limit: int | None = None
    seed: int = 0
    batch_size: int = 100
    device: str = "auto"
    pretrained: bool = False
    workers: int = 0
    cache: Path | None = None
    skip_bad_images: bool = False  # leave unreadable images out (recorded in the results) instead of failing
    health_probes: bool = True  # probe each model on its first batch (robench.health); results are checked anyway

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return plain_config(self)


@dataclass
class TransferOutcomes:
    """Per-sample predictions: clean per model, adversarial per (source, target) and setting."""

    ids: list[str]
    labels: np.ndarray
    settings: list[tuple[str, float]]
    clean: dict[str, np.ndarray] = field(default_factory=dict)
    clean_top5: dict[str, np.ndarray] = field(default_factory=dict)
    pred: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # [settings, N]
    top5: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    crafted: int = 0  # attack calls made (0 when every example came from the cache)
    least_likely: dict[str, np.ndarray] = field(default_factory=dict)  # per model: [N] clean least-likely class
    linf: dict[str, np.ndarray] = field(default_factory=dict)  # per source: [settings, N] ||x_adv - x||_inf, 1/255

    @classmethod
    def empty(cls, ids: list[str], settings: list[tuple[str, float]], models: list[LoadedModel],
              sources: list[LoadedModel], targets: list[LoadedModel]) -> TransferOutcomes:
        """Tables for every model (clean) and (source, target) pair, waiting to be filled."""
        n, k = len(ids), len(settings)
        out = cls(ids=list(ids), labels=np.full(n, -1, dtype=np.int64), settings=settings)
        for m in models:
            out.clean[m.spec.label] = np.full((1, n), -1, dtype=np.int32)
            out.clean_top5[m.spec.label] = np.zeros((1, n), dtype=bool)
            out.least_likely[m.spec.label] = np.full(n, -1, dtype=np.int32)
        for s in sources:
            out.linf[s.spec.label] = np.zeros((k, n), dtype=np.float32)
            for t in {id(m): m for m in [*targets, s]}.values():
                out.pred[(s.spec.label, t.spec.label)] = np.full((k, n), -1, dtype=np.int32)
                out.top5[(s.spec.label, t.spec.label)] = np.zeros((k, n), dtype=bool)
        return out

    def part(self, rows: np.ndarray) -> dict[str, Any]:
        """These rows' outcomes (and this process's attack calls), for another rank."""
        tables = {name: {k: v[..., rows] for k, v in getattr(self, name).items()} for name in _TABLES}
        return {"rows": rows, "labels": self.labels[rows], "crafted": self.crafted, "tables": tables}

    def fill(self, part: dict[str, Any]) -> None:
        """Take in rows' outcomes made by another rank (``part``)."""
        rows = np.asarray(part["rows"], dtype=np.int64)
        self.labels[rows] = part["labels"]
        for name in _TABLES:
            for k, v in part["tables"][name].items():
                getattr(self, name)[k][..., rows] = v

    def subset(self, rows: np.ndarray) -> TransferOutcomes:
        """Only these rows, in this order (e.g. leaving out images that could not be read)."""
        tables = {name: {k: v[..., rows] for k, v in getattr(self, name).items()} for name in _TABLES}
        return TransferOutcomes([self.ids[r] for r in rows], self.labels[rows], self.settings,
                                crafted=self.crafted, **tables)

    def white_box(self, source: str) -> Outcomes:
        """A source's outcomes on its own examples, as ``robench eval`` records them."""
        key, n = (source, source), len(self.labels)
        return Outcomes(self.ids, self.labels, [(CLEAN, 0.0), *self.settings],
                        np.vstack([self.clean[source], self.pred[key]]),
                        np.vstack([self.clean_top5[source], self.top5[key]]),
                        self.least_likely[source], np.vstack([np.zeros((1, n), np.float32), self.linf[source]]))


_TABLES = ("clean", "clean_top5", "pred", "top5", "least_likely", "linf")  # per-sample tables, samples last


def deliver(x_target: Tensor, delta: Tensor, eps: float) -> Tensor:
    """The source's perturbation, at the target's resolution, on the target's clean input."""
    if delta.shape[-2:] != x_target.shape[-2:]:
        delta = F.interpolate(delta, size=x_target.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
    unit = to_unit(eps)
    return (x_target + delta.clamp(-unit, unit)).clamp(0.0, 1.0)


class ExampleCache:
    """Adversarial examples on disk, one safetensors file per (source, attack, eps, batch), float32."""

    def __init__(self, root: Path, ids: list[str], cfg: TransferConfig, dist: Dist = LOCAL) -> None:
        self.root, self.ids_hash, self.cfg = root, ids_sha256(ids), cfg
        self.shard = [dist.world_size, dist.rank]  # under torchrun, which samples a batch index holds

    def _path(self, model: LoadedModel, spec: AttackSpec, batch_index: int) -> Path:
        key = json.dumps([model.weights_sha256, self.ids_hash, spec.describe(), self.cfg.seed,
                          self.cfg.batch_size, list(model.input.size), self.shard], sort_keys=True)
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:32] / f"batch-{batch_index:06d}.safetensors"

    def load(self, model: LoadedModel, spec: AttackSpec, batch_index: int) -> list[tuple[float, Tensor]] | None:
        from safetensors.torch import load_file

        path = self._path(model, spec, batch_index)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        return [(e, tensors[f"eps={e!r}"]) for e in spec.eps]

    def save(self, model: LoadedModel, spec: AttackSpec, batch_index: int,
             examples: list[tuple[float, Tensor]]) -> None:
        from safetensors.torch import save_file

        from robench.files import atomic_write

        path = self._path(model, spec, batch_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"eps={e!r}": x.detach().cpu().contiguous() for e, x in examples}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def _views(source: Any, configs: list[InputConfig], batch_size: int,
           order: Tensor | None = None) -> Iterator[dict[InputConfig, Batch]]:
    """The same samples (``order``: these rows), batch by batch, as each distinct input config sees them."""
    iterators = {c: source.batches(c, batch_size, order) for c in configs}
    for batches in zip(*iterators.values(), strict=True):
        yield dict(zip(iterators, batches, strict=True))


def _record(preds: np.ndarray, hits: np.ndarray, setting: int, rows: np.ndarray, logits: Tensor, y: Tensor) -> None:
    preds[setting, rows], hits[setting, rows] = predictions(logits, y)


@dataclass
class _Run:
    """State shared by the batches of one transfer run."""

    sources: list[LoadedModel]
    targets: list[LoadedModel]
    suite: Suite
    out: TransferOutcomes
    seed: int
    cache: ExampleCache | None
    device: torch.device

    def examples(self, s: LoadedModel, a: int, x: Tensor, labels: Labels, index: int,
                 ids: list[str]) -> list[tuple[float, Tensor]]:
        """The source's adversarial examples for attack ``a``: from the cache, or crafted once."""
        spec = self.suite.attacks[a]
        cached = self.cache.load(s, spec, index) if self.cache else None
        if cached is not None:
            return [(e, t.to(self.device)) for e, t in cached]
        self.out.crafted += 1
        rng = attack_noise(self.seed, spec.id, ids)
        made = list(REGISTRY[spec.name].run(s.module, x, labels, spec.eps, spec.config, rng))
        if self.cache:
            self.cache.save(s, spec, index, made)
        return made

    def batch(self, views: dict[InputConfig, Batch], index: int) -> None:
        """Clean forwards once per model, then each source's examples scored on every target."""
        first = next(iter(views.values()))
        rows, y = first.rows.numpy(), first.labels.to(self.device)
        ids = [self.out.ids[r] for r in rows.tolist()]
        self.out.labels[rows] = first.labels.numpy()
        x = {c: b.images.to(self.device) for c, b in views.items()}
        clean = {}
        for m in {id(m): m for m in self.sources + self.targets}.values():
            clean[m.spec.label] = logits = score(m.module, x[m.input])
            _record(self.out.clean[m.spec.label], self.out.clean_top5[m.spec.label], 0, rows, logits, y)
            self.out.least_likely[m.spec.label][rows] = logits.argmin(1).cpu().numpy()
        for s in self.sources:
            labels = Labels.from_logits(clean[s.spec.label], y)
            scorers = self.targets if s in self.targets else [*self.targets, s]
            setting = 0
            for a in range(len(self.suite.attacks)):
                for eps, x_adv in self.examples(s, a, x[s.input], labels, index, ids):
                    self.out.linf[s.spec.label][setting, rows] = linf_255(x_adv, x[s.input])
                    for t in scorers:
                        xt = x_adv if t.input == s.input else deliver(x[t.input], x_adv - x[s.input], eps)
                        key = (s.spec.label, t.spec.label)
                        _record(self.out.pred[key], self.out.top5[key], setting, rows, score(t.module, xt), y)
                    setting += 1


def _pick(models: list[LoadedModel], names: tuple[str, ...] | None, option: str) -> list[LoadedModel]:
    if names is None:
        return models
    by_label = {m.spec.label: m for m in models}
    if not names:
        raise RobenchError(f"{option} is empty; name at least one model label, e.g. {option} {models[0].spec.label}")
    unknown = [n for n in names if n not in by_label]
    if unknown:
        raise RobenchError(f"{option} names '{unknown[0]}', which is not a model; labels: {', '.join(by_label)}")
    return [by_label[n] for n in names]


@dataclass
class TransferResult:
    """Tidy rows (one per source x target x attack x eps, plus clean rows) and provenance."""

    rows: pd.DataFrame
    outcomes: TransferOutcomes
    meta: dict[str, Any]
    health: list[health.Flag] = field(default_factory=list)  # also in meta["health"], as records


def _check_cache(path: Path | None) -> None:
    if path is None:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".robench-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RobenchError(f"--cache {path} is not a writable folder ({e.strerror}); choose another folder") from None


def run_transfer(cfg: TransferConfig, progress: Progress | None = None, warn: Callable[[str], None] | None = None,
                 dist: Dist = LOCAL) -> TransferResult | None:
    """Craft on every source once per batch, score on every target; see the module docstring.

    Under torchrun (``dist``) each rank takes its shard of the samples; rank 0 gets the
    result, identical sample by sample to a one-process run, and the others get None.
    """
    if not cfg.models:
        raise RobenchError("transfer-matrix needs at least one --model")
    _check_cache(cfg.cache)
    torch.manual_seed(cfg.seed)
    device = dist.device if dist.is_distributed else resolve_device(cfg.device)
    source = open_source(cfg.data, "test", cfg.limit, cfg.seed, cfg.workers, cfg.skip_bad_images)
    models = load_models(cfg.models, source, cfg.pretrained, device)
    sources, targets = _pick(models, cfg.sources, "--sources"), _pick(models, cfg.targets, "--targets")
    out = TransferOutcomes.empty(source.ids, settings_of(cfg.suite)[1:], models, sources, targets)
    probes = probe_models(models, source, cfg.batch_size) if cfg.health_probes and dist.is_main else []
    cache = ExampleCache(cfg.cache, source.ids, cfg, dist) if cfg.cache else None
    run = _Run(sources, targets, cfg.suite, out, cfg.seed, cache, device)
    configs = list(dict.fromkeys(m.input for m in models))
    mine = shard(len(source.ids), dist)
    done = 0
    with ExitStack() as stack:
        for m in models:
            stack.enter_context(attack_mode(m.module))
        for index, views in enumerate(_views(source, configs, cfg.batch_size, mine)):
            run.batch(views, index)
            done += len(next(iter(views.values())).rows)
            if progress is not None:
                progress("transfer", done, len(mine))
    gathered = gather((out.part(mine.numpy()), source.skipped), dist)
    if gathered is None:
        return None
    for part, _ in gathered[1:]:
        out.fill(part)
    out.crafted = sum(part["crafted"] for part, _ in gathered)
    skipped = merge_skipped([bad for _, bad in gathered])
    if skipped:
        out = out.subset(np.array([r for r in range(len(source.ids)) if r not in skipped], dtype=np.int64))
    _report_nonfinite(out, warn)
    rows = summarize(out, [s.spec.label for s in sources], [t.spec.label for t in targets])
    dataset = dataset_record(source, cfg.data, "test", out.ids, skipped)
    meta = envelope("transfer-matrix", cfg.describe(), dataset,
                    [m.describe() for m in models], {**metrics.TRANSFER_DEFINITIONS})
    meta["sources"], meta["targets"] = [s.spec.label for s in sources], [t.spec.label for t in targets]
    meta["crafted_attack_calls"] = out.crafted
    flags = [*probes, *transfer_health(out, rows, cfg.suite, [s.spec.label for s in sources])]
    meta["health"] = health.records(flags)
    return TransferResult(rows, out, meta, flags)


def _report_nonfinite(out: TransferOutcomes, warn: Callable[[str], None] | None) -> None:
    """One warning per model and input kind with NaN or inf logits (those samples count as wrong)."""
    if warn is None:
        return
    for label, pred in out.clean.items():
        if (bad := int((pred == NONFINITE).sum())):
            warn(f"model '{label}' gave NaN or inf logits on {bad} clean samples; they count as wrong")
    for (s, t), pred in out.pred.items():
        if (bad := int((pred == NONFINITE).sum())):
            warn(f"model '{t}' gave NaN or inf logits on {bad} adversarial examples from '{s}'; they count as wrong")


def transfer_health(out: TransferOutcomes, rows: pd.DataFrame, suite: Suite, sources: list[str]) -> list[health.Flag]:
    """The result checks: each source's white-box outcomes as eval's, and transfer against white-box."""
    white = {s: out.white_box(s) for s in sources}
    white_rows = pd.concat([metrics.summarize(o, s) for s, o in white.items()], ignore_index=True)
    return [*health.eval_flags(white_rows, white, suite),
            *health.transfer_beats_white_box(rows, health.transfer_correctness(out))]


def summarize(out: TransferOutcomes, sources: list[str], targets: list[str]) -> pd.DataFrame:
    """Tidy rows: each target's clean row, then (source, target, attack, eps) rows."""
    y = out.labels
    rows = [{"source": t, "target": t, "attack": CLEAN, "eps": 0.0,
             "target_top1": float((out.clean[t][0] == y).mean()), "target_top5": float(out.clean_top5[t][0].mean()),
             "transfer_rate": float("nan"), "n_fooled_source": None, "n": len(y)} for t in targets]
    for s in sources:
        for t in targets:
            for k, (attack, eps) in enumerate(out.settings):
                rate, fooled = metrics.transfer_rate(out.clean[s][0], out.clean[t][0], out.pred[(s, s)][k],
                                                     out.pred[(s, t)][k], y)
                rows.append({"source": s, "target": t, "attack": attack, "eps": eps,
                             "target_top1": float((out.pred[(s, t)][k] == y).mean()),
                             "target_top5": float(out.top5[(s, t)][k].mean()), "transfer_rate": rate,
                             "n_fooled_source": fooled, "n": len(y)})
    frame = pd.DataFrame(rows, columns=metrics.TRANSFER_COLUMNS)
    frame["n_fooled_source"] = frame["n_fooled_source"].astype("Int64")
    return frame
