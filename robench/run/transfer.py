"""Black-box transfer: examples crafted on each source, scored on every target.

Examples are crafted once per (source, attack, eps) and scored on all targets; each
model's clean forward runs once per batch. Sources and targets may differ in input
size and normalization: an example reaches a target as the source's perturbation
(x_adv - x, at the source's resolution) resized to the target's resolution with
bilinear interpolation (a convex combination, so ||delta||_inf <= eps still holds),
added to the target's own clean input and clipped to [0, 1]. With a zero perturbation
this is exactly the target's clean input, so its clean accuracy is unchanged; when the
two input configs are equal the source's example is used as it is.

A source may be an ensemble of the run's models (``TransferConfig.ensembles``,
``robench.models.ensemble``): one more source, labelled by its members joined by '+', whose
examples every target scores, the models held out of it included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch.nn.functional as F
from torch import Tensor

from robench import engine
from robench.analysis import health, metrics, worst
from robench.attacks import REGISTRY
from robench.attacks.base import TargetClass, project, to_unit
from robench.attacks.suite import CLEAN, Suite
from robench.core.distributed import LOCAL, Dist
from robench.core.fields import Rule, check
from robench.core.files import kind_of
from robench.data import to_channels
from robench.engine import Progress, Status, correct
from robench.errors import FieldError
from robench.models import LoadedModel
from robench.models.ensemble import Ensemble, EnsembleSpec, by_problem, ensemble_input, ensembles_problem, say_ensembles
from robench.results.provenance import dataset_record, envelope
from robench.run.precision import check_precision
from robench.run.runspec import Opened, RunSpec, model_texts_problem, open_run, parse_specs, probe_models
from robench.run.store import ExampleCache, check_space, open_store
from robench.run.survivors import SURVIVOR_CHECK, SURVIVOR_RULE, survivor_check

TRANSFER_FIELDS = {  # robench.core.fields; the labels are checked against the models once they are open
    "models": Rule(tuple, "a tuple of model specs (text)", test=model_texts_problem),
    "run": Rule(RunSpec, "a RunSpec (robench.run.runspec)"),
    "cache": Rule(Path | None, "a folder's Path, or None"),
    "survivor_check": SURVIVOR_RULE,
    "ensembles": Rule(tuple, "a tuple of ensembles, each a tuple of model labels", test=ensembles_problem,
                      show=say_ensembles),
    "ensemble_by": Rule(str, "logits, probs or loss", test=by_problem),
}


@dataclass(frozen=True)
class TransferConfig:
    """Everything that decides the numbers of a transfer-matrix run."""

    models: tuple[str, ...]
    sources: tuple[str, ...] | None = None  # labels; None means every model
    targets: tuple[str, ...] | None = None
    run: RunSpec = field(default_factory=RunSpec)
    cache: Path | None = None  # adversarial examples kept here between runs (ExampleCache)
    survivor_check: int = SURVIVOR_CHECK  # a suite with shortcuts: full AutoAttack on this many white-box survivors
    ensembles: tuple[tuple[str, ...], ...] = ()  # each one more source: these labels' models averaged as one
    ensemble_by: str = "logits"  # what the members' outputs are averaged as: logits, probs or loss (Ensemble)

    def __post_init__(self) -> None:
        check(self, TRANSFER_FIELDS)
        if self.ensemble_by != "logits" and not self.ensembles:
            raise FieldError("ensemble_by", f"{{name}} {self.ensemble_by} says how an ensemble source combines its "
                                            f"members, but no {{ensembles}} is given; add one or leave it out",
                             "ensembles")
        other = [a for a in self.run.suite.attacks if not REGISTRY[a.name].ce_loss]
        if self.ensembles and self.ensemble_by == "loss" and other:
            able = ", ".join(n for n, a in REGISTRY.items() if a.ce_loss)
            raise FieldError("ensemble_by", f"{{name}} loss averages the members' cross-entropy, which "
                                            f"'{other[0].id}' ({other[0].name}) does not step on; those that do: "
                                            f"{able}; use logits or probs, or keep only those attacks")

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files: the run's fields alongside transfer's own."""
        return {"models": list(self.models), "sources": _list(self.sources), "targets": _list(self.targets),
                **self.run.describe(), "cache": None if self.cache is None else str(self.cache),
                "survivor_check": self.survivor_check, "ensembles": [list(e) for e in self.ensembles],
                "ensemble_by": self.ensemble_by}

    def ensemble_specs(self) -> list[EnsembleSpec]:
        """The ensembles, each member a label of ``models`` (FieldError naming ``ensembles`` otherwise).

        Checked on the specs' labels, before any model is loaded.
        """
        labels = [p.label for p in parse_specs(self.models)] if self.ensembles else []
        specs = [EnsembleSpec(members, self.ensemble_by) for members in self.ensembles]
        for e in specs:
            unknown = next((m for m in e.members if m not in labels), None)
            if unknown is not None:
                raise FieldError("ensembles", f"{{name}} '{e.label}' names '{unknown}', which is not a model; "
                                              f"labels: {', '.join(labels)}")
            if e.label in labels:
                raise FieldError("ensembles", f"{{name}} '{e.label}' is also a model's label; label that model "
                                              f"apart with LABEL=SPEC")
        return specs

    def picked(self, models: list[LoadedModel]) -> tuple[list[LoadedModel], list[LoadedModel]]:
        """(sources, targets) of the opened ``models``: every model unless named. Ensembles are sources
        besides these, so a matrix shows each member's own row beside the ensemble's."""
        return _pick(models, self.sources, "sources"), _pick(models, self.targets, "targets")


def _list(labels: tuple[str, ...] | None) -> list[str] | None:
    return None if labels is None else list(labels)


def deliver(x_target: Tensor, delta: Tensor, eps: float, norm: str = "linf") -> Tensor:
    """The source's perturbation, at the target's resolution and channels, on the target's clean input.

    An RGB perturbation reaches a 1-channel target as its luminance, as RGB images do. It is kept
    in the target's own ball of ``eps``: clipped to +-eps/255 (L-inf), or under L2 scaled down to
    L2 norm eps where resizing grew it (upsampling by k multiplies an L2 norm by about k).
    """
    delta = to_channels(delta, x_target.shape[1])
    if delta.shape[-2:] != x_target.shape[-2:]:
        delta = F.interpolate(delta, size=x_target.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
    if norm == "l2":
        return project(x_target + delta, x_target, eps, "l2")
    unit = to_unit(eps)
    return (x_target + delta.clamp(-unit, unit)).clamp(0.0, 1.0)


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
    kind = kind_of(path)
    if kind is not None and kind != "a folder" or path.is_file():
        raise FieldError("cache", f"{{name}} {path} is {kind or 'a file'}, not a folder; give a folder for the "
                                  "example store")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".robench-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FieldError("cache", f"{{name}} {path} is not a writable folder ({e.strerror}); "
                         f"choose another folder") from None
    open_store(path)


def check_amp_cache(cfg: TransferConfig) -> None:
    """Refuse amp with a cache: the store keys on the models, not on their precision."""
    if cfg.cache is not None and cfg.run.amp is not None:
        raise FieldError("amp", "{name} cannot be combined with {cache}: the example cache does not yet key on "
                                "precision; leave out one of them", "cache")


def plan(opened: Opened, sources: list[LoadedModel], targets: list[LoadedModel],
         ensembles: Sequence[EnsembleSpec] = (), aim: TargetClass | None = None) -> engine.Plan:
    """Each source (the ensembles after the models) scored by every target and by itself (the white-box
    diagonal and the transfer rate need it).

    ``aim``: a targeted run's choice of each sample's class (RunSpec.target_class).
    """
    models = opened.participants()
    by_label = {p.label: p for p in models}
    joint = [ensemble_participant(e, by_label) for e in ensembles]
    labels = [t.spec.label for t in targets]
    crafting = [s.spec.label for s in sources] + [e.label for e in joint]
    return engine.Plan(tuple(models + joint), {s: tuple(dict.fromkeys([s, *labels])) for s in crafting}, deliver,
                       aim)


def ensemble_participant(spec: EnsembleSpec, models: Mapping[str, engine.Participant]) -> engine.Participant:
    """An ensemble as the engine sees it: its label, an ``Ensemble`` over the members' modules, the input it reads."""
    members = [models[m] for m in spec.members]
    inputs = [m.input for m in members]
    return engine.Participant(spec.label, Ensemble([m.module for m in members], inputs, spec.by),
                              ensemble_input(inputs))


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
             "its cascade/early_stop settings apply to eval (and choose the survivor check) only")
    return dataclasses.replace(suite, cascade=False, early_stop=False)


def run_transfer(cfg: TransferConfig, progress: Progress | None = None, warn: Callable[[str], None] | None = None,
                 dist: Dist = LOCAL, status: Status | None = None,
                 note: Callable[[str], None] | None = None) -> TransferResult | None:
    """Craft on every source once per batch, score on every target; see the module docstring.

    ``progress`` and ``status`` hear the images done and the stage now, as in ``run_eval``.

    Under torchrun (``dist``) each rank takes its shard of the samples; rank 0 gets the
    result, identical sample by sample to a one-process run, and the others get None.
    ``note`` hears, before any work, the bytes the example store will take (rank 0's).
    """
    if not cfg.models:
        raise FieldError("models", "transfer-matrix needs at least one {name}")
    ensembles = cfg.ensemble_specs()
    _check_cache(cfg.cache)
    check_amp_cache(cfg)
    opened = open_run(cfg.run, cfg.models, dist, warn)
    sources, targets = cfg.picked(opened.models)
    if len({m.spec.label for m in [*sources, *targets]}) == 1 and not ensembles and warn is not None:
        warn(f"transfer-matrix with one model ('{sources[0].spec.label}') measures only its white-box diagonal, no "
             f"transfer; give two or more models (-m)")
    suite = full_strength(cfg.run.suite, warn)
    whole = plan(opened, sources, targets, ensembles, cfg.run.target_class)
    cache = None
    if cfg.cache is not None:
        cache = ExampleCache(cfg.cache, opened.models, cfg.run.seed, opened.source.classes, dist.rank, dist.world_size,
                             cfg.run.target_class, ensembles)
        check_space(cache, [whole.model(s) for s in whole.targets], suite, opened.source.ids,
                    note if dist.rank == 0 else None)
    probed = probe_models(opened, cfg.run, dist, status, "transfer")
    opened.precision = check_precision(opened, cfg.run, warn if dist.is_main else None)
    hooks = engine.Hooks(progress, warn, store=cache, what="transfer", status=status)
    try:
        done = engine.run(whole, opened.source, suite, cfg.run.seed, cfg.run.batch_size, dist, hooks)
    finally:  # the blocks still held: on an interrupted run too, what was crafted is kept
        if cache is not None:
            cache.flush()
    if cache is not None:
        cache.report(warn)
    if done is None:
        return None
    out, skipped = done
    s_labels, t_labels = list(whole.targets), [t.spec.label for t in targets]
    rows = summarize(out, s_labels, t_labels, suite.norms(), cfg.run.target_class is not None)
    dataset = dataset_record(opened.source, opened.data, "test", out.ids, skipped, out.content)
    meta = envelope("transfer-matrix", {**cfg.describe(), "data": opened.data}, dataset,
                    [m.describe() for m in opened.models], {**metrics.TRANSFER_DEFINITIONS})
    meta["sources"], meta["targets"] = s_labels, t_labels
    meta["ensembles"] = [e.describe() for e in ensembles]
    meta["crafted_attack_calls"] = out.crafted
    meta["precision"] = opened.precision
    meta["semantics"] = suite.semantics()
    meta["probes"] = probed.record()
    white = {s: worst.with_worst(o, suite.norms()) for s, o in out.white_box().items()}
    survivor_flags, meta["survivor_check"] = survivor_check(
        cfg.run.suite, cfg.survivor_check, opened, [whole.model(s) for s in s_labels], white, cfg.run)
    flags = [*probed.flags, *survivor_flags, *transfer_health(out, rows, cfg.run.suite)]
    meta["health"] = health.records(flags)
    return TransferResult(rows, out, meta, flags)


def transfer_health(out: engine.Matrix, rows: pd.DataFrame, suite: Suite) -> list[health.Flag]:
    """The result checks: each source's white-box outcomes as eval's, NaN/inf logits of every target on any
    source's examples, and transfer against white-box."""
    white = out.white_box()
    white_rows = pd.concat([metrics.summarize(o, s, suite.norms()) for s, o in white.items()], ignore_index=True)
    return [*health.nonfinite_logits((t, o) for (_, t), o in out.pairs.items()),
            *health.eval_flags(white_rows, white, suite),
            *health.transfer_beats_white_box(rows, out.correctness())]


def summarize(out: engine.Matrix, sources: list[str], targets: list[str],
              norms: Mapping[str, str] | None = None, targeted: bool = False) -> pd.DataFrame:
    """Tidy rows: each target's clean row, then (source, target, attack, eps) rows.

    ``norms``: attack id -> its norm (``Suite.norms()``), for the ``norm`` column; an id it lacks is L-inf.
    ``targeted``: a targeted run, whose rows also get the targeted success rate (NaN otherwise).
    """
    y = out.labels
    clean = {t: next(o for (_, tt), o in out.pairs.items() if tt == t) for t in targets}
    none = {"transfer_rate": float("nan"), "n_fooled_source": None, "transfer_rate_both_clean": float("nan"),
            "n_fooled_source_both_clean": None, "targeted_success_rate": float("nan")}
    rows = []
    for t in targets:
        right = correct(clean[t].pred[0], y)
        rows.append({"source": t, "target": t, "attack": CLEAN, "norm": None, "eps": 0.0,
                     "target_top1": float(right.mean()),
                     "target_top5": float(clean[t].top5[0].mean()), "target_error": float((~right).mean()), **none,
                     "n": len(y)})
    for s in sources:
        white = out.pairs[(s, s)]
        for t in targets:
            o = out.pairs[(s, t)]
            for k, (attack, eps) in enumerate(o.settings[1:], start=1):
                right = correct(o.pred[k], y)
                rows.append({"source": s, "target": t, "attack": attack, "norm": worst.norm_of(attack, norms),
                             "eps": eps, "target_top1": float(right.mean()),
                             "target_top5": float(o.top5[k].mean()), "target_error": float((~right).mean()),
                             **metrics.transfer_rates(white.pred[0], o.pred[0], white.pred[k], o.pred[k], y),
                             "targeted_success_rate": metrics.targeted_success_rate(o.pred[k], o.goal)
                             if targeted else float("nan"), "n": len(y)})
    frame = pd.DataFrame(rows, columns=metrics.TRANSFER_COLUMNS)
    for column in ("n_fooled_source", "n_fooled_source_both_clean"):
        frame[column] = frame[column].astype("Int64")
    return frame
