"""One batch of a run: clean forwards, each source's examples (crafted or kept), every target's scores."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from robench.attacks import REGISTRY, Labels
from robench.attacks.base import SampleNoise, goal_classes
from robench.attacks.suite import AttackSpec, Suite
from robench.core.progress import iterations_to
from robench.data import Batch, InputConfig
from robench.engine.hooks import Hooks, Tracker
from robench.engine.outcomes import Matrix, correct, predictions
from robench.engine.passes import count_passes, pass_units
from robench.engine.plan import Examples, Participant, Plan, sample_key

Views = dict[InputConfig, Batch]  # the same samples as each distinct input config sees them


def linf_255(x_adv: Tensor, x: Tensor) -> np.ndarray:
    """Each sample's ||x_adv - x||_inf in 1/255 units, the unit of eps."""
    return ((x_adv - x).abs().flatten(1).amax(1) * 255).float().cpu().numpy()


def l2_pixels(x_adv: Tensor, x: Tensor) -> np.ndarray:
    """Each sample's ||x_adv - x||_2 in [0, 1] pixels, the unit of an L2 eps (in float64: a sum of many squares)."""
    return (x_adv - x).flatten(1).double().norm(p=2, dim=1).float().cpu().numpy()


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
    return _streams(f"{seed}\0{attack_id}", ids)


def goal_noise(seed: int, ids: Sequence[str]) -> SampleNoise:
    """Each sample's stream for its random target class, seeded by (seed, sample id) alone.

    So a sample's class is the same for every source and attack, at any batch size, order or
    rank. The text leads with a word, so no attack's stream (``attack_noise``) can be the same.
    """
    return _streams(f"target-class\0{seed}", ids)


def _streams(key: str, ids: Sequence[str]) -> SampleNoise:
    """One stream per sample, seeded by the hash of (``key``, sample id) alone."""
    def stream(sample_id: str) -> int:
        digest = hashlib.blake2b(f"{key}\0{sample_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    return SampleNoise(tuple(stream(i) for i in ids))


def _device(plan: Plan) -> torch.device:
    """Where the models are (the first model's first parameter; the CPU for a model without any)."""
    first = next(plan.models[0].module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


class _Batch:
    """One batch of a run: every model's clean logits and each source's examples, scored by its targets."""

    def __init__(self, plan: Plan, suite: Suite, out: Matrix, seed: int, hooks: Hooks, views: Views,
                 tracker: Tracker) -> None:
        self.plan, self.suite, self.out, self.seed = plan, suite, out, seed
        self.store, self.warn, self.tracker = hooks.store, hooks.warn, tracker
        first = next(iter(views.values()))
        device = _device(plan)
        # non-blocking: a copy from pinned memory overlaps the GPU's work; from pageable memory, or to the CPU, it is
        # an ordinary copy. Either way the stream orders it before any use.
        self.rows, self.labels = first.rows.numpy(), first.labels.numpy()
        self.y = first.labels.to(device, non_blocking=True)
        self.ids = [out.ids[r] for r in self.rows.tolist()]
        content = first.content or ("",) * len(self.ids)
        self.keys = [sample_key(i, c) for i, c in zip(self.ids, content, strict=True)]  # what a store keys on
        self.x = {c: b.images.to(device, non_blocking=True) for c, b in views.items()}

    def run(self) -> None:
        """Clean forwards once per model, then every source's examples."""
        clean = {m.label: score(m.module, self.x[m.input]) for m in self.plan.models}
        self.tracker.planned([REGISTRY[a.name].budget(a.config, a.eps, clean[s].shape[1])
                              * pass_units(self.plan.model(s).module)  # an ensemble's step pays each member
                              for s in self.plan.targets for a in self.suite.attacks])
        goals = {s: self.goal(clean[s]) for s in self.plan.targets}
        for (s, t), o in self.out.pairs.items():
            o.labels[self.rows] = self.labels
            o.record(0, self.rows, clean[t], self.y)
            o.least_likely[self.rows] = clean[s].argmin(1).cpu().numpy()
            if (goal := goals[s]) is not None:
                o.goal[self.rows] = goal.cpu().numpy()
        for s in self.plan.targets:
            self.source(self.plan.model(s), Labels.from_logits(clean[s], self.y, goals[s]))

    def goal(self, logits: Tensor) -> Tensor | None:
        """[B] each sample's target class from a source's clean logits, or None in an untargeted run."""
        if self.plan.aim is None:
            return None
        return goal_classes(self.plan.aim, logits, self.y, goal_noise(self.seed, self.ids))

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
                linf, l2 = linf_255(x_adv, xs), l2_pixels(x_adv, xs)
                for t in self.plan.targets[s.label]:
                    target = self.plan.model(t)
                    xt = x_adv if target.input == s.input else \
                        self.plan.cross(self.x[target.input], x_adv - xs, eps, spec.norm)
                    o = self.out.pairs[(s.label, t)]
                    o.record(setting, self.rows, score(target.module, xt), self.y)
                    o.linf[setting, self.rows], o.l2[setting, self.rows] = linf, l2
                setting += 1
            self.tracker.finished_attack()

    def examples(self, s: Participant, spec: AttackSpec, x: Tensor, labels: Labels) -> Examples:
        """The source's examples for one attack: from the store where it has them, else crafted once."""
        rows = self.rows.tolist()  # positions in the run: a store may group samples by them
        kept = self.store.load(s.label, spec, self.keys, x, rows) if self.store else [None] * len(self.ids)
        missing = [i for i, k in enumerate(kept) if k is None]
        if not missing:
            return [(e, torch.stack([k[j][1] for k in kept if k is not None]).to(x.device))
                    for j, e in enumerate(spec.eps)]
        made = self.craft(s, spec, x, labels, missing)
        if self.store:  # scored as kept, so a rerun that reads them back gives the same numbers
            made = self.store.save(s.label, spec, [self.keys[i] for i in missing], x[missing], made,
                                   [rows[i] for i in missing])
        if len(missing) == len(kept):
            return made
        rows = {r: j for j, r in enumerate(missing)}
        return [(e, torch.stack([x_e[rows[i]] if k is None else k[j][1].to(x.device)
                                 for i, k in enumerate(kept)])) for j, (e, x_e) in enumerate(made)]

    def craft(self, s: Participant, spec: AttackSpec, x: Tensor, labels: Labels, rows: list[int]) -> Examples:
        """One attack call on these rows of the batch (all of them, unless a store had the rest)."""
        if len(rows) < len(x):
            index = torch.tensor(rows, device=x.device)
            x = x[index]
            labels = labels.rows(index)
        return self.call(s, spec, x, labels, [self.ids[i] for i in rows], spec.eps)

    def call(self, s: Participant, spec: AttackSpec, x: Tensor, labels: Labels, ids: list[str],
             eps: Sequence[float], early_stop: bool = False) -> Examples:
        """The attack on these samples at these eps: one attack call, its passes charged to (source, attack).

        Its passes so far are reported at each of its iterations (robench.core.progress).
        """
        self.out.crafted += 1
        with count_passes(s.module) as passes, iterations_to(lambda: self.tracker.working(passes.total)):
            made = list(REGISTRY[spec.name].run(s.module, x, labels, eps, spec.config,
                                                attack_noise(self.seed, spec.id, ids), early_stop))
        self.out.charge(s.label, spec.id, passes)
        self.tracker.ended_call(passes.total)
        return made


Row = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # per sample: prediction, top-5 hit, L-inf (1/255), L2


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
        zeros = np.zeros(len(rows), np.float32)
        clean = (self.o.pred[0, rows].copy(), self.o.top5[0, rows].copy(), zeros, zeros)
        # per threat model and eps: an L-inf eps 1 (1/255) and an L2 eps 1 are other balls
        every_eps = {(a.norm, float(e)) for a in batch.suite.attacks for e in a.eps}
        self.state: dict[tuple[str, float], Row] = {k: tuple(v.copy() for v in clean) for k in every_eps}

    def run(self) -> None:
        """Every attack of the suite in order, each at its eps ascending."""
        setting, tracker = 1, self.batch.tracker
        for spec in self.batch.suite.attacks:
            tracker.begin(spec.id, self.s.label)
            self.attack(spec, {float(e): setting + j for j, e in enumerate(spec.eps)})
            setting += len(spec.eps)
            tracker.finished_attack()

    def robust(self, norm: str, e: float) -> np.ndarray:
        """[B] which samples the state still has right at eps e of this norm."""
        return correct(self.state[(norm, e)][0], self.batch.labels)

    def attack(self, spec: AttackSpec, settings: dict[float, int]) -> None:
        """One attack's rows: crafted for the samples still in play, carried for the rest."""
        cascade, early_stop, n = self.batch.suite.cascade, self.batch.suite.early_stop, len(self.x)
        carried = np.zeros(n, dtype=bool)  # fooled by this attack at a smaller eps
        carry: Row = (np.zeros(n, np.int32), np.zeros(n, bool), np.zeros(n, np.float32), np.zeros(n, np.float32))
        ahead = self.single_step(spec) if REGISTRY[spec.name].single_step else None
        for e in sorted(settings):
            todo = (self.robust(spec.norm, e) if cascade else np.ones(n, dtype=bool)) & ~carried
            fresh = (v.copy() for v in self.state[(spec.norm, e)]) if cascade else (np.zeros_like(v) for v in carry)
            row = cast(Row, tuple(fresh))  # four arrays in, four out
            if todo.any():
                self.score(row, todo, ahead[e][todo] if ahead else self.craft(spec, e, todo), cascade,
                           (spec.norm, e))
            for mine, theirs in zip(row, carry, strict=True):
                mine[carried] = theirs[carried]
            self.record(settings[e], row)
            if cascade:
                self.state[(spec.norm, e)] = row
            if early_stop:
                newly = todo & ~correct(row[0], self.batch.labels)
                for theirs, mine in zip(carry, row, strict=True):
                    theirs[newly] = mine[newly]
                carried |= newly

    def single_step(self, spec: AttackSpec) -> dict[float, Tensor]:
        """A single-step attack's examples at every eps from one gradient, for every sample that may need one."""
        need = np.ones(len(self.x), dtype=bool)
        if self.batch.suite.cascade:
            need = np.any([self.robust(spec.norm, float(e)) for e in spec.eps], axis=0)
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

    def score(self, row: Row, todo: np.ndarray, x_adv: Tensor, cascade: bool, key: tuple[str, float]) -> None:
        """Write the outcomes of these samples' examples into ``row`` (``key``: the state's (norm, eps))."""
        index = self.index(todo)
        pred, top5 = predictions(score(self.s.module, x_adv), self.batch.y[index])
        row[0][todo] = pred
        row[1][todo] = top5 & self.state[key][1][todo] if cascade else top5
        row[2][todo], row[3][todo] = linf_255(x_adv, self.x[index]), l2_pixels(x_adv, self.x[index])

    def record(self, setting: int, row: Row) -> None:
        rows = self.batch.rows
        o = self.o
        o.pred[setting, rows], o.top5[setting, rows], o.linf[setting, rows], o.l2[setting, rows] = row

    def index(self, mask: np.ndarray) -> Tensor:
        return torch.from_numpy(np.flatnonzero(mask)).to(self.x.device)

    def ids(self, mask: np.ndarray) -> list[str]:
        return [i for i, m in zip(self.batch.ids, mask, strict=True) if m]
