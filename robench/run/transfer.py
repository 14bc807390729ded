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

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from robench import engine
from robench.analysis import health, metrics
from robench.attacks.base import to_unit
from robench.attacks.suite import CLEAN, AttackSpec, Suite
from robench.core.distributed import LOCAL, Dist
from robench.data import to_channels
from robench.engine import Examples, Progress, Status, correct
from robench.errors import FieldError
from robench.models import LoadedModel
from robench.results.provenance import dataset_record, envelope
from robench.run.runspec import Opened, RunSpec, open_run, probe_models


@dataclass(frozen=True)
class TransferConfig:
    """Everything that decides the numbers of a transfer-matrix run."""

    models: tuple[str, ...]
    sources: tuple[str, ...] | None = None  # labels; None means every model
    targets: tuple[str, ...] | None = None
    run: RunSpec = field(default_factory=RunSpec)
    cache: Path | None = None  # adversarial examples kept here between runs (ExampleCache)

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files: the run's fields alongside transfer's own."""
        return {"models": list(self.models), "sources": _list(self.sources), "targets": _list(self.targets),
                **self.run.describe(), "cache": None if self.cache is None else str(self.cache)}


def _list(labels: tuple[str, ...] | None) -> list[str] | None:
    return None if labels is None else list(labels)


def deliver(x_target: Tensor, delta: Tensor, eps: float) -> Tensor:
    """The source's perturbation, at the target's resolution and channels, on the target's clean input.

    An RGB perturbation reaches a 1-channel target as its luminance, as RGB images do.
    """
    delta = to_channels(delta, x_target.shape[1])
    if delta.shape[-2:] != x_target.shape[-2:]:
        delta = F.interpolate(delta, size=x_target.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
    unit = to_unit(eps)
    return (x_target + delta.clamp(-unit, unit)).clamp(0.0, 1.0)


STORE_FORMAT = "delta-int8-eps/127"  # in the cache key: files of another format are misses, never misread


def quantize(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """The perturbation ``x_adv - x`` as int8 in steps of eps/127 (eps in 1/255 units).

    Steps scaled to eps keep ``||delta||_inf <= eps`` exact and a precision of eps/254 per
    pixel, finer than uint8 images (1/255) for every eps below 127, at a quarter of float32.
    """
    unit = to_unit(eps)
    if unit == 0:  # no perturbation to keep
        return torch.zeros_like(x, dtype=torch.int8)
    return ((x_adv - x) * (127 / unit)).round().clamp(-127, 127).to(torch.int8)


def dequantize(q: Tensor, x: Tensor, eps: float) -> Tensor:
    """The example ``quantize`` kept: within eps of ``x`` and in [0, 1], as the attack's was."""
    unit = to_unit(eps)
    return (x + (q.to(x.dtype) * (unit / 127)).clamp(-unit, unit)).clamp(0.0, 1.0)


class ExampleCache:
    """Adversarial examples on disk, one safetensors file per (source, attack, sample).

    A file holds the sample's perturbation at each eps as int8 in steps of eps/127
    (``quantize``): C*H*W bytes per eps plus a safetensors header (about 380 bytes for 4 eps,
    its checksum included), 3 KB per image at 32 px and 150 KB at ImageNet's 3x224x224, so
    50k ImageNet images take 7.5 GB per source, attack and eps, against 30 GB as float32. An
    example read back is the clean input plus that perturbation, within eps/254 of the crafted
    one per pixel; ``save`` returns it and runs score it, so a run's numbers are the same
    whether its examples were crafted or read.

    A sample's file is keyed by what decides its examples (the source's weights and input
    config, the attack spec, the seed, the data's class numbering (it decides the labels an
    attack uses) and the sample's key: its id and content hash, so an image altered under the
    same name is a miss, never another image's example) and by ``STORE_FORMAT``, never by batch size, batch index
    or torchrun rank, so a rerun at any batch size or world size, or a resumed one, crafts only
    the samples it lacks. A file is trusted only if it passes ``_problem``'s checks (exactly
    the eps keys, int8, the input's shape, |q| <= 127, and a SHA-256 over the key and bytes);
    else it counts as missing: it is crafted again and rewritten, and ``report`` says so once.
    """

    def __init__(self, root: Path, models: list[LoadedModel], seed: int, classes: list[str]) -> None:
        self.root, self.seed, self.classes = root, seed, classes
        self.models = {m.spec.label: m for m in models}
        self.bad: list[tuple[Path, str]] = []  # (file, what was wrong with it), in the order found

    def _folder(self, source: str, spec: AttackSpec) -> Path:
        m = self.models[source]
        key = json.dumps([*m.function(), spec.describe(), self.seed, self.classes, STORE_FORMAT], sort_keys=True)
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:32]

    @staticmethod
    def _file(folder: Path, sample_id: str) -> Path:
        name = hashlib.sha256(sample_id.encode()).hexdigest()
        return folder / name[:2] / f"{name}.safetensors"

    def load(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor) -> list[Examples | None]:
        """Each sample's examples [(eps, x_adv [C, H, W])] on ``x`` (its clean input), or None where missing or bad."""
        folder = self._folder(source, spec)
        return [self._read(folder, i, spec, x_i) for i, x_i in zip(ids, x, strict=True)]

    def _read(self, folder: Path, sample_id: str, spec: AttackSpec, x: Tensor) -> Examples | None:
        from safetensors import safe_open

        path = self._file(folder, sample_id)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                names, stored = list(f.keys()), (f.metadata() or {}).get("sha256")
                tensors = {k: f.get_tensor(k) for k in names}
        except Exception as e:  # noqa: BLE001 - a torn or foreign file is a miss, whatever the error
            self.bad.append((path, f"unreadable: {type(e).__name__}"))
            return None
        problem = _problem(tensors, [_name(e) for e in spec.eps], tuple(x.shape))
        if problem is None and stored != checksum(folder.name, sample_id, tensors):
            problem = "no checksum" if stored is None else "checksum mismatch: altered or torn"
        if problem is not None:
            self.bad.append((path, problem))
            return None
        return [(e, dequantize(tensors[_name(e)].to(x.device), x, e)) for e in spec.eps]

    def save(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor, examples: Examples) -> Examples:
        """Keep each sample's perturbations and their checksum, one file per sample (written atomically).

        Returns the examples as kept.
        """
        from safetensors.torch import save_file

        from robench.core.files import atomic_write

        folder = self._folder(source, spec)
        kept = [(e, quantize(x_adv, x, e)) for e, x_adv in examples]
        for row, sample_id in enumerate(ids):
            path = self._file(folder, sample_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {_name(e): q[row].cpu().contiguous() for e, q in kept}
            meta = {"sha256": checksum(folder.name, sample_id, tensors)}
            atomic_write(path, lambda tmp, t=tensors, m=meta: save_file(t, str(tmp), metadata=m))
        return [(e, dequantize(q, x, e)) for e, q in kept]

    def report(self, warn: Callable[[str], None] | None) -> None:
        """One warning for the run's bad files, naming the first and counting them all."""
        if warn is None or not self.bad:
            return
        path, why = self.bad[0]
        if len(self.bad) == 1:
            warn(f"cache file {path} was bad ({why}); its examples were crafted again and the file rewritten")
        else:
            warn(f"{len(self.bad)} cache files were bad, the first {path} ({why}); their examples were crafted "
                 "again and the files rewritten")


def _name(eps: float) -> str:
    """The tensor name of one eps in a cache file."""
    return f"eps={eps!r}"


def checksum(folder: str, sample_id: str, tensors: dict[str, Tensor]) -> str:
    """SHA-256 of a cache file's key (its folder and sample id) and of each tensor's name, dtype, shape and bytes.

    The key is inside, so a file copied onto another sample's or attack's path fails too.
    """
    h = hashlib.sha256(json.dumps([folder, sample_id]).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _problem(tensors: dict[str, Tensor], names: list[str], shape: tuple[int, ...]) -> str | None:
    """What makes a cache file's tensors unusable (keys, dtype, shape, range), or None."""
    if set(tensors) != set(names):
        return f"holds {sorted(tensors)}, not {names}"
    for name in names:
        q = tensors[name]
        if q.dtype != torch.int8:
            return f"{name} is {q.dtype}, not torch.int8"
        if tuple(q.shape) != shape:
            return f"{name} has shape {tuple(q.shape)}, not {shape}"
        if int(q.min()) < -127:
            return f"{name} holds {int(q.min())}, outside [-127, 127]"
    return None


def _pick(models: list[LoadedModel], names: tuple[str, ...] | None, what: str) -> list[LoadedModel]:
    if names is None:
        return models
    by_label = {m.spec.label: m for m in models}
    if not names:
        raise FieldError(what, f"{{name}} is empty; name at least one model label, e.g. {{name}} "
                         f"{models[0].spec.label}")
    unknown = [n for n in names if n not in by_label]
    if unknown:
        raise FieldError(what, f"{{name}} names '{unknown[0]}', which is not a model; labels: {', '.join(by_label)}")
    return [by_label[n] for n in names]


@dataclass
class TransferResult:
    """Tidy rows (one per source x target x attack x eps, plus clean rows) and provenance."""

    rows: pd.DataFrame
    outcomes: engine.Matrix
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
        raise FieldError("cache", f"{{name}} {path} is not a writable folder ({e.strerror}); "
                         f"choose another folder") from None


def plan(opened: Opened, sources: list[LoadedModel], targets: list[LoadedModel]) -> engine.Plan:
    """Each source scored by every target and by itself (the white-box diagonal and the transfer rate need it)."""
    labels = [t.spec.label for t in targets]
    return engine.Plan(tuple(opened.participants()),
                       {s.spec.label: tuple(dict.fromkeys([s.spec.label, *labels])) for s in sources}, deliver)


def full_strength(suite: Suite, warn: Callable[[str], None] | None) -> Suite:
    """The suite without cascade and early stopping, which are white-box notions.

    A transfer example is crafted once and scored on every target, so "the samples still
    robust" has no single meaning, and an example stopped at the source's first
    misclassification would understate transfer. The worst-case row is left out for the
    same reason: transfer rates are per attack (the paper's Table 4 and 5).
    """
    if not (suite.cascade or suite.early_stop):
        return suite
    if warn is not None:
        warn(f"suite {suite.source}: transfer-matrix runs every attack on every sample at full strength; "
             "its cascade/early_stop settings apply to eval only")
    return dataclasses.replace(suite, cascade=False, early_stop=False)


def run_transfer(cfg: TransferConfig, progress: Progress | None = None, warn: Callable[[str], None] | None = None,
                 dist: Dist = LOCAL, status: Status | None = None) -> TransferResult | None:
    """Craft on every source once per batch, score on every target; see the module docstring.

    ``progress`` and ``status`` hear the images done and the stage now, as in ``run_eval``.

    Under torchrun (``dist``) each rank takes its shard of the samples; rank 0 gets the
    result, identical sample by sample to a one-process run, and the others get None.
    """
    if not cfg.models:
        raise FieldError("models", "transfer-matrix needs at least one {name}")
    _check_cache(cfg.cache)
    opened = open_run(cfg.run, cfg.models, dist, warn)
    sources, targets = _pick(opened.models, cfg.sources, "sources"), _pick(opened.models, cfg.targets, "targets")
    if len({m.spec.label for m in [*sources, *targets]}) == 1 and warn is not None:
        warn(f"transfer-matrix with one model ('{sources[0].spec.label}') measures only its white-box diagonal, no "
             f"transfer; give two or more models (-m)")
    flags = probe_models(opened, cfg.run, dist, status, "transfer")
    cache = ExampleCache(cfg.cache, opened.models, cfg.run.seed, opened.source.classes) if cfg.cache else None
    hooks = engine.Hooks(progress, warn, store=cache, what="transfer", status=status)
    suite = full_strength(cfg.run.suite, warn)
    done = engine.run(plan(opened, sources, targets), opened.source, suite, cfg.run.seed, cfg.run.batch_size,
                      dist, hooks)
    if cache is not None:
        cache.report(warn)
    if done is None:
        return None
    out, skipped = done
    s_labels, t_labels = [s.spec.label for s in sources], [t.spec.label for t in targets]
    rows = summarize(out, s_labels, t_labels)
    dataset = dataset_record(opened.source, opened.data, "test", out.ids, skipped, out.content)
    meta = envelope("transfer-matrix", {**cfg.describe(), "data": opened.data}, dataset,
                    [m.describe() for m in opened.models], {**metrics.TRANSFER_DEFINITIONS})
    meta["sources"], meta["targets"] = s_labels, t_labels
    meta["crafted_attack_calls"] = out.crafted
    meta["semantics"] = suite.semantics()
    flags = [*flags, *transfer_health(out, rows, cfg.run.suite)]
    meta["health"] = health.records(flags)
    return TransferResult(rows, out, meta, flags)


def transfer_health(out: engine.Matrix, rows: pd.DataFrame, suite: Suite) -> list[health.Flag]:
    """The result checks: each source's white-box outcomes as eval's, NaN/inf logits of every target on any
    source's examples, and transfer against white-box."""
    white = out.white_box()
    white_rows = pd.concat([metrics.summarize(o, s) for s, o in white.items()], ignore_index=True)
    return [*health.nonfinite_logits((t, o) for (_, t), o in out.pairs.items()),
            *health.eval_flags(white_rows, white, suite),
            *health.transfer_beats_white_box(rows, out.correctness())]


def summarize(out: engine.Matrix, sources: list[str], targets: list[str]) -> pd.DataFrame:
    """Tidy rows: each target's clean row, then (source, target, attack, eps) rows."""
    y = out.labels
    clean = {t: next(o for (_, tt), o in out.pairs.items() if tt == t) for t in targets}
    none = {"transfer_rate": float("nan"), "n_fooled_source": None, "transfer_rate_both_clean": float("nan"),
            "n_fooled_source_both_clean": None}
    rows = []
    for t in targets:
        right = correct(clean[t].pred[0], y)
        rows.append({"source": t, "target": t, "attack": CLEAN, "eps": 0.0, "target_top1": float(right.mean()),
                     "target_top5": float(clean[t].top5[0].mean()), "target_error": float((~right).mean()), **none,
                     "n": len(y)})
    for s in sources:
        white = out.pairs[(s, s)]
        for t in targets:
            o = out.pairs[(s, t)]
            for k, (attack, eps) in enumerate(o.settings[1:], start=1):
                right = correct(o.pred[k], y)
                rows.append({"source": s, "target": t, "attack": attack, "eps": eps, "target_top1": float(right.mean()),
                             "target_top5": float(o.top5[k].mean()), "target_error": float((~right).mean()),
                             **metrics.transfer_rates(white.pred[0], o.pred[0], white.pred[k], o.pred[k], y),
                             "n": len(y)})
    frame = pd.DataFrame(rows, columns=metrics.TRANSFER_COLUMNS)
    for column in ("n_fooled_source", "n_fooled_source_both_clean"):
        frame[column] = frame[column].astype("Int64")
    return frame
