"""The evaluation engine: sources craft, targets score, one pass over the data for every command.

A run is a ``Plan``: models, and for each source the targets that score its examples. A
white-box sweep (``robench eval``) is the case where every model is its own only target;
a transfer matrix is the general case. Per batch each model's clean forward runs once
(under inference_mode); then each source crafts its examples for every attack (once, for
all its eps) and every target scores each example once. Only per-sample outcomes are
kept (a few bytes per sample per setting), so memory is O(batch). Out-of-memory batches
are halved and retried, finished batches go to the resume state, and under torchrun each
rank runs its shard and rank 0 gathers: all written once, here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from robench.attacks import REGISTRY, Labels, attack_mode
from robench.attacks.base import SampleNoise
from robench.attacks.suite import CLEAN, AttackSpec, Suite
from robench.core.distributed import LOCAL, Dist, gather, shard
from robench.data import Batch, InputConfig, Source
from robench.engine.passes import Passes, count_passes
from robench.engine.resume import RunState

Warn = Callable[[str], None]
Progress = Callable[[str, float, int], None]  # (what, images done, images total): at the start, per attack, per batch
Status = Callable[[str, str], None]  # (what, what it is doing now): e.g. ("eval", "pgd on resnet")
Deliver = Callable[[Tensor, Tensor, float], Tensor]  # (target's clean x, source's x_adv - x, eps) -> target's input
Examples = list[tuple[float, Tensor]]  # (eps, x_adv) for every eps of an attack


NONFINITE = -2  # the prediction recorded for NaN/inf logits: never a label, so never counted correct


def correct(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Top-1 correctness, the one definition: the prediction is the label (pred [..., N], labels [N])."""
    return pred == labels


def merge_skipped(parts: list[dict[int, str]]) -> dict[int, str]:
    """The unreadable images every rank left out (row -> file)."""
    return {row: name for part in parts for row, name in part.items()}


@dataclass
class Outcomes:
    """Per-sample outcomes of one (source, target) pair: setting s, sample i -> prediction and top-5 hit.

    Setting 0 is the target's clean input; setting s > 0 is the source's example for
    ``settings[s]`` as the target scores it. A white-box sweep is the pair (model, model).
    """

    ids: list[str]
    labels: np.ndarray  # [N] int64
    settings: list[tuple[str, float]]  # (attack id, eps); settings[0] is ("clean", 0.0)
    pred: np.ndarray  # [S, N] int32 top-1 prediction (NONFINITE for NaN/inf logits)
    top5: np.ndarray  # [S, N] bool: label among the top 5
    least_likely: np.ndarray | None = None  # [N] int32: least-likely class of the source's clean logits
    linf: np.ndarray | None = None  # [S, N] float32: ||x_adv - x||_inf of the source's example, 1/255 units

    def __post_init__(self) -> None:
        s, n = self.pred.shape
        if self.least_likely is None:
            self.least_likely = np.full(n, -1, dtype=np.int32)
        if self.linf is None:
            self.linf = np.zeros((s, n), dtype=np.float32)

    @classmethod
    def empty(cls, ids: list[str], settings: list[tuple[str, float]]) -> Outcomes:
        """Tables for these samples and settings, waiting to be filled (-1: not run yet)."""
        n, s = len(ids), len(settings)
        return cls(ids=ids, labels=np.full(n, -1, dtype=np.int64), settings=settings,
                   pred=np.full((s, n), -1, dtype=np.int32), top5=np.zeros((s, n), dtype=bool))

    def record(self, setting: int, rows: np.ndarray, logits: Tensor, labels: Tensor) -> None:
        """Store top-1 prediction and top-5 hit for these rows; NaN/inf logits count as wrong."""
        self.pred[setting, rows], self.top5[setting, rows] = predictions(logits, labels)

    def part(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """These rows' outcomes, for a resume file or another rank."""
        return {"labels": self.labels[rows], "pred": self.pred[:, rows], "top5": self.top5[:, rows],
                "least_likely": self.least_likely[rows], "linf": self.linf[:, rows]}

    def fill(self, rows: np.ndarray, part: Mapping[str, np.ndarray]) -> None:
        """Take in rows' outcomes made elsewhere (by ``part``)."""
        self.labels[rows], self.least_likely[rows] = part["labels"], part["least_likely"]
        self.pred[:, rows], self.top5[:, rows], self.linf[:, rows] = part["pred"], part["top5"], part["linf"]

    def subset(self, rows: np.ndarray) -> Outcomes:
        """Only these rows, in this order (e.g. leaving out images that could not be read)."""
        return Outcomes([self.ids[r] for r in rows], self.labels[rows], self.settings, self.pred[:, rows],
                        self.top5[:, rows], self.least_likely[rows], self.linf[:, rows])

    def correct(self) -> np.ndarray:
        """[S, N] top-1 correctness."""
        return correct(self.pred, self.labels)

    def nonfinite(self) -> np.ndarray:
        """[S] how many samples gave NaN or inf logits, per setting."""
        return (self.pred == NONFINITE).sum(1)


Pair = tuple[str, str]  # (source label, target label)


@dataclass
class Matrix:
    """Every (source, target) pair's outcomes of one run, on the same samples and settings."""

    ids: list[str]
    settings: list[tuple[str, float]]
    pairs: dict[Pair, Outcomes]
    crafted: int = 0  # attack calls made (0 when every example came from the cache)
    cost: dict[str, list[int]] = field(default_factory=dict)  # json [source, attack] -> [forward, backward]
    content: list[str] = field(default_factory=list)  # each row's content hash ("" where not read yet)

    def __post_init__(self) -> None:
        if not self.content:
            self.content = [""] * len(self.ids)

    def charge(self, source: str, attack: str, passes: Passes) -> None:
        """Add an attack call's per-sample passes to its (source, attack) cost."""
        cost = self.cost.setdefault(json.dumps([source, attack]), [0, 0])
        cost[0] += passes.forward
        cost[1] += passes.backward

    def costs(self) -> list[dict[str, Any]]:
        """Per (source, attack): forward and backward passes made crafting, summed over samples.

        A pass over a batch of B samples counts B; divide by n for passes per sample.

        Passes, not seconds, go into results files: they are the same on any machine, batch
        size or number of torchrun ranks (a resumed run counts the batches it ran).
        """
        return [{"model": s, "attack": a, "forward_passes": int(c[0]), "backward_passes": int(c[1])}
                for (s, a), c in ((json.loads(k), c) for k, c in self.cost.items())]

    @classmethod
    def empty(cls, ids: list[str], settings: list[tuple[str, float]], pairs: Iterable[Pair]) -> Matrix:
        """Tables for every pair, waiting to be filled."""
        return cls(list(ids), settings, {p: Outcomes.empty(list(ids), settings) for p in pairs})

    @property
    def labels(self) -> np.ndarray:
        """[N] the samples' labels (-1 where not run yet)."""
        return next(iter(self.pairs.values())).labels

    def done(self, rows: np.ndarray) -> np.ndarray:
        """Which of these rows hold outcomes already (a resumed run)."""
        return self.labels[rows] >= 0

    def part(self, rows: np.ndarray) -> dict[str, Any]:
        """These rows' outcomes of every pair, for a resume file or another rank."""
        return {"rows": rows, "crafted": self.crafted, "cost": self.cost,
                "content": [self.content[r] for r in rows.tolist()],
                "pairs": {json.dumps(p): o.part(rows) for p, o in self.pairs.items()}}

    def fill(self, part: Mapping[str, Any], keep: np.ndarray | None = None) -> None:
        """Take in rows' outcomes made elsewhere (by ``part``); only the rows ``keep`` marks, when given."""
        rows = np.asarray(part["rows"], dtype=np.int64)
        keep = np.ones(len(rows), dtype=bool) if keep is None else keep
        for key, values in part["pairs"].items():
            values = {name: v[..., keep] for name, v in values.items()}
            self.pairs[tuple(json.loads(key))].fill(rows[keep], values)
        for r, digest in zip(rows[keep].tolist(), np.asarray(part.get("content") or [""] * len(rows))[keep],
                             strict=True):
            self.content[r] = str(digest)

    def subset(self, rows: np.ndarray) -> Matrix:
        """Only these rows, in this order."""
        return Matrix([self.ids[r] for r in rows], self.settings, {p: o.subset(rows) for p, o in self.pairs.items()},
                      self.crafted, self.cost, [self.content[r] for r in rows])

    def white_box(self) -> dict[str, Outcomes]:
        """Each source's outcomes on its own examples, by model label (what ``robench eval`` reports)."""
        return {s: o for (s, t), o in self.pairs.items() if s == t}

    def correctness(self) -> dict[tuple[str, str, str, float], np.ndarray]:
        """Per-sample top-1 correctness keyed (source, target, attack, eps), for paired tests."""
        return {(s, t, a, float(e)): ok for (s, t), o in self.pairs.items()
                for (a, e), ok in zip(o.settings, o.correct(), strict=True)}

    def nonfinite_lines(self) -> list[str]:
        """One line per model (white-box) or pair (transfer) whose logits were NaN or inf somewhere."""
        lines, clean_told = [], set()
        for (s, t), o in self.pairs.items():
            bad = o.nonfinite()
            if s == t:
                clean_told.add(t)
                if bad.any():
                    where = ", ".join(f"{a} eps {e:g}: {n}" if a != CLEAN else f"clean: {n}"
                                      for (a, e), n in zip(o.settings, bad, strict=True) if n)
                    lines.append(f"model '{t}' gave NaN or inf logits ({where} samples); they count as wrong")
            elif bad[1:].any():
                lines.append(f"model '{t}' gave NaN or inf logits on {int(bad[1:].sum())} adversarial examples "
                             f"from '{s}'; they count as wrong")
        for (_, t), o in self.pairs.items():
            if t not in clean_told and (bad := int(o.nonfinite()[0])):
                clean_told.add(t)
                lines.append(f"model '{t}' gave NaN or inf logits on {bad} clean samples; they count as wrong")
        return lines


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


def attack_noise(seed: int, attack_id: str, ids: Sequence[str]) -> SampleNoise:
    """Randomness for one attack (PGD's start) on these samples, reproducible and independent.

    Each sample's stream is seeded by (seed, attack id, sample id), so its examples do not
    depend on the batch size, the batch it falls in, the torchrun rank that runs it, or
    which other attacks ran (or came from a cache) before.
    """
    def stream(sample_id: str) -> int:
        digest = hashlib.blake2b(f"{seed}\0{attack_id}\0{sample_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    return SampleNoise(tuple(stream(i) for i in ids))


# --- the plan: who crafts, who scores --------------------------------------------------------------

@dataclass(frozen=True)
class Participant:
    """A model as the engine sees it: its label, a module taking [0, 1] pixels, and its input config."""

    label: str
    module: nn.Module
    input: InputConfig


def sample_key(sample_id: str, content: str) -> str:
    """What an example store keys a sample on: its id and its content hash (an altered image under one name is
    another sample)."""
    return f"{sample_id}#{content}" if content else sample_id


class ExampleStore(Protocol):
    """Where a source's examples may already be kept (transfer's cache), per sample.

    ``ids`` are the samples' keys (id and content hash: the same name with other pixels is
    another sample). ``x`` is the source's clean input of those samples ([N, C, H, W], rows as ``ids``): a store
    may keep the perturbation rather than the example. ``save`` returns the examples exactly as
    a later ``load`` gives them back, and the engine scores those, so a run's numbers do not
    depend on whether the store already had them (a lossy store included).
    """

    def load(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor) -> list[Examples | None]: ...

    def save(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor, examples: Examples) -> Examples: ...


@dataclass(frozen=True)
class Plan:
    """The models of a run and, for each source, the labels that score its examples (itself first)."""

    models: tuple[Participant, ...]
    targets: Mapping[str, tuple[str, ...]]
    deliver: Deliver | None = None  # how an example reaches a target of another input config

    def __post_init__(self) -> None:
        crosses = any(self.model(s).input != self.model(t).input for s, t in self.pairs())
        if crosses and self.deliver is None:
            raise ValueError("a source's examples reach a target of another input config; give the plan a deliver")

    @classmethod
    def white_box(cls, models: Iterable[Participant]) -> Plan:
        """Every model attacked with its own gradients and scored by itself alone."""
        models = tuple(models)
        return cls(models, {m.label: (m.label,) for m in models})

    def pairs(self) -> list[Pair]:
        """Every (source, target) pair, sources in model order."""
        return [(s, t) for s in self.targets for t in self.targets[s]]

    def model(self, label: str) -> Participant:
        """The participant labelled ``label``."""
        return next(m for m in self.models if m.label == label)

    def configs(self) -> list[InputConfig]:
        """The distinct input configs, each read once per batch."""
        return list(dict.fromkeys(m.input for m in self.models))


# --- one batch -------------------------------------------------------------------------------------

Views = dict[InputConfig, Batch]  # the same samples as each distinct input config sees them


class _Batch:
    """One batch of a run: every model's clean logits and each source's examples, scored by its targets."""

    def __init__(self, plan: Plan, suite: Suite, out: Matrix, seed: int, hooks: Hooks, views: Views,
                 tracker: Tracker) -> None:
        self.plan, self.suite, self.out, self.seed = plan, suite, out, seed
        self.store, self.warn, self.tracker = hooks.store, hooks.warn, tracker
        first = next(iter(views.values()))
        device = _device(plan)
        self.rows, self.labels, self.y = first.rows.numpy(), first.labels.numpy(), first.labels.to(device)
        self.ids = [out.ids[r] for r in self.rows.tolist()]
        content = first.content or ("",) * len(self.ids)
        self.keys = [sample_key(i, c) for i, c in zip(self.ids, content, strict=True)]  # what a store keys on
        self.x = {c: b.images.to(device) for c, b in views.items()}

    def run(self) -> None:
        """Clean forwards once per model, then every source's examples."""
        clean = {m.label: score(m.module, self.x[m.input]) for m in self.plan.models}
        for (s, t), o in self.out.pairs.items():
            o.labels[self.rows] = self.labels
            o.record(0, self.rows, clean[t], self.y)
            o.least_likely[self.rows] = clean[s].argmin(1).cpu().numpy()
        for s in self.plan.targets:
            self.source(self.plan.model(s), Labels.from_logits(clean[s], self.y))

    def source(self, s: Participant, labels: Labels) -> None:
        """The source's examples for every attack x eps, each scored by every target of the source."""
        if self.suite.cascade or self.suite.early_stop:
            Survivors(self, s, labels).run()
            return
        setting = 1
        xs = self.x[s.input]
        for spec in self.suite.attacks:
            self.tracker.begin(spec.id, s.label)
            for eps, x_adv in self.examples(s, spec, xs, labels):
                linf = linf_255(x_adv, xs)
                for t in self.plan.targets[s.label]:
                    target = self.plan.model(t)
                    xt = x_adv if target.input == s.input else self.plan.deliver(self.x[target.input], x_adv - xs, eps)
                    o = self.out.pairs[(s.label, t)]
                    o.record(setting, self.rows, score(target.module, xt), self.y)
                    o.linf[setting, self.rows] = linf
                setting += 1
            self.tracker.finished_attack(len(self.rows))

    def examples(self, s: Participant, spec: AttackSpec, x: Tensor, labels: Labels) -> Examples:
        """The source's examples for one attack: from the store where it has them, else crafted once."""
        kept = self.store.load(s.label, spec, self.keys, x) if self.store else [None] * len(self.ids)
        missing = [i for i, k in enumerate(kept) if k is None]
        if not missing:
            return [(e, torch.stack([k[j][1] for k in kept]).to(x.device)) for j, e in enumerate(spec.eps)]
        made = self.craft(s, spec, x, labels, missing)
        if self.store:  # scored as kept, so a rerun that reads them back gives the same numbers
            made = self.store.save(s.label, spec, [self.keys[i] for i in missing], x[missing], made)
        if len(missing) == len(kept):
            return made
        rows = {r: j for j, r in enumerate(missing)}
        return [(e, torch.stack([x_e[rows[i]] if i in rows else kept[i][j][1].to(x.device)
                                 for i in range(len(kept))])) for j, (e, x_e) in enumerate(made)]

    def craft(self, s: Participant, spec: AttackSpec, x: Tensor, labels: Labels, rows: list[int]) -> Examples:
        """One attack call on these rows of the batch (all of them, unless a store had the rest)."""
        if len(rows) < len(x):
            index = torch.tensor(rows, device=x.device)
            x = x[index]
            labels = labels.rows(index)
        return self.call(s, spec, x, labels, [self.ids[i] for i in rows], spec.eps)

    def call(self, s: Participant, spec: AttackSpec, x: Tensor, labels: Labels, ids: list[str],
             eps: Sequence[float], early_stop: bool = False) -> Examples:
        """The attack on these samples at these eps: one attack call, its passes charged to (source, attack)."""
        self.out.crafted += 1
        with count_passes(s.module) as passes:
            made = list(REGISTRY[spec.name].run(s.module, x, labels, eps, spec.config,
                                                attack_noise(self.seed, spec.id, ids), early_stop))
        self.out.charge(s.label, spec.id, passes)
        return made


Row = tuple[np.ndarray, np.ndarray, np.ndarray]  # per sample of a batch: prediction, top-5 hit, L-inf (1/255)


class Survivors:
    """One white-box source under cascade and/or early stopping: attacks run on survivors only.

    The state, per eps, is each sample's outcome under the strongest example so far (clean at
    first). Under cascade an attack runs at eps e only on the samples still robust at e, and its
    row is the state after it ("robust after this stage"); a sample is attacked with exactly the
    example a full run would give it, so the worst case is the full run's. Under early stopping
    a sample fooled at a smaller eps keeps that example at the larger ones (it lies in their
    ball), eps ascending. Single-step attacks still take one gradient for every eps.
    """

    def __init__(self, batch: _Batch, s: Participant, labels: Labels) -> None:
        self.batch, self.s, self.labels = batch, s, labels
        self.o, self.x = batch.out.pairs[(s.label, s.label)], batch.x[s.input]
        rows = batch.rows
        clean = (self.o.pred[0, rows].copy(), self.o.top5[0, rows].copy(), np.zeros(len(rows), np.float32))
        every_eps = sorted({float(e) for a in batch.suite.attacks for e in a.eps})
        self.state: dict[float, Row] = {e: tuple(v.copy() for v in clean) for e in every_eps}

    def run(self) -> None:
        """Every attack of the suite in order, each at its eps ascending."""
        setting, tracker = 1, self.batch.tracker
        for spec in self.batch.suite.attacks:
            tracker.begin(spec.id, self.s.label)
            self.attack(spec, {float(e): setting + j for j, e in enumerate(spec.eps)})
            setting += len(spec.eps)
            tracker.finished_attack(len(self.x))

    def robust(self, e: float) -> np.ndarray:
        """[B] which samples the state still has right at eps e."""
        return correct(self.state[e][0], self.batch.labels)

    def attack(self, spec: AttackSpec, settings: dict[float, int]) -> None:
        """One attack's rows: crafted for the samples still in play, carried for the rest."""
        cascade, early_stop, n = self.batch.suite.cascade, self.batch.suite.early_stop, len(self.x)
        carried = np.zeros(n, dtype=bool)  # fooled by this attack at a smaller eps
        carry: Row = (np.zeros(n, np.int32), np.zeros(n, bool), np.zeros(n, np.float32))
        ahead = self.single_step(spec) if REGISTRY[spec.name].single_step else None
        for e in sorted(settings):
            todo = (self.robust(e) if cascade else np.ones(n, dtype=bool)) & ~carried
            row: Row = tuple(v.copy() for v in self.state[e]) if cascade else tuple(np.zeros_like(v) for v in carry)
            if todo.any():
                self.score(row, todo, ahead[e][todo] if ahead else self.craft(spec, e, todo), cascade, e)
            for mine, theirs in zip(row, carry, strict=True):
                mine[carried] = theirs[carried]
            self.record(settings[e], row)
            if cascade:
                self.state[e] = row
            if early_stop:
                newly = todo & ~correct(row[0], self.batch.labels)
                for theirs, mine in zip(carry, row, strict=True):
                    theirs[newly] = mine[newly]
                carried |= newly

    def single_step(self, spec: AttackSpec) -> dict[float, Tensor]:
        """A single-step attack's examples at every eps from one gradient, for every sample that may need one."""
        need = np.ones(len(self.x), dtype=bool)
        if self.batch.suite.cascade:
            need = np.any([self.robust(float(e)) for e in spec.eps], axis=0)
        out = {float(e): self.x.clone() for e in spec.eps}
        if need.any():
            index = self.index(need)
            made = self.batch.call(self.s, spec, self.x[index], self.labels.rows(index), self.ids(need), spec.eps)
            for e, x_e in made:
                out[float(e)][index] = x_e
        return out

    def craft(self, spec: AttackSpec, e: float, todo: np.ndarray) -> Tensor:
        """An iterative attack's examples at eps e for these samples."""
        index = self.index(todo)
        made = self.batch.call(self.s, spec, self.x[index], self.labels.rows(index), self.ids(todo), [e],
                               self.batch.suite.early_stop)
        return made[0][1]

    def score(self, row: Row, todo: np.ndarray, x_adv: Tensor, cascade: bool, e: float) -> None:
        """Write the outcomes of these samples' examples into ``row``."""
        index = self.index(todo)
        pred, top5 = predictions(score(self.s.module, x_adv), self.batch.y[index])
        row[0][todo] = pred
        row[1][todo] = top5 & self.state[e][1][todo] if cascade else top5
        row[2][todo] = linf_255(x_adv, self.x[index])

    def record(self, setting: int, row: Row) -> None:
        rows = self.batch.rows
        self.o.pred[setting, rows], self.o.top5[setting, rows], self.o.linf[setting, rows] = row

    def index(self, mask: np.ndarray) -> Tensor:
        return torch.from_numpy(np.flatnonzero(mask)).to(self.x.device)

    def ids(self, mask: np.ndarray) -> list[str]:
        return [i for i, m in zip(self.batch.ids, mask, strict=True) if m]


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


@dataclass
class Hooks:
    """What a run reports to and keeps in, beyond its outcomes."""

    progress: Progress | None = None
    warn: Warn | None = None
    state: RunState | None = None  # resume: finished batches are appended here, and taken from here
    store: ExampleStore | None = None  # examples kept between runs (transfer's cache)
    what: str = "eval"  # the progress bar's label
    status: Status | None = None  # hears which attack on which source is running


class Tracker:
    """Progress within a batch: the stage now, and the share of the batch done after each (source, attack).

    A batch under every attack can take minutes; a log that moved only per batch stayed
    silent that long. A piece retried after out-of-memory counts again from its start.
    """

    def __init__(self, hooks: Hooks, done: int, total: int, steps: int) -> None:
        self.hooks, self.done, self.total, self.steps = hooks, done, total, steps  # steps: (source, attack) pairs
        self.finished, self.step = 0, 0  # samples in finished pieces of this batch; steps done in the piece now

    def begin(self, attack: str, source: str) -> None:
        """Say which attack on which source runs now."""
        if self.hooks.status is not None:
            self.hooks.status(self.hooks.what, f"{attack} on {source}")

    def finished_attack(self, piece: int) -> None:
        """One (source, attack) step of a piece of ``piece`` samples is done."""
        self.step += 1
        if self.hooks.progress is not None:
            share = min(self.step, self.steps) / self.steps
            self.hooks.progress(self.hooks.what, self.done + self.finished + piece * share, self.total)

    def start_piece(self) -> None:
        """A piece starts (again, after out of memory split it): its steps count from 0."""
        self.step = 0

    def finished_piece(self, piece: int) -> None:
        """A piece of the batch is done: the next one counts from its end."""
        self.finished += piece


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
            size = run_views_fitting(lambda piece, t=tracker: _piece(plan, suite, out, seed, hooks, piece, t),
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


def _device(plan: Plan) -> torch.device:
    """Where the models are (the first model's first parameter; the CPU for a model without any)."""
    first = next(plan.models[0].module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


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
        _resume(out, hooks.state.load(), source, mine, hooks.warn)
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
    for line in out.nonfinite_lines() if hooks.warn else []:
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
