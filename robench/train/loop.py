"""Adversarial training with the recipe of Kurakin, Goodfellow & Bengio (2017), section 3.

Each minibatch mixes clean and adversarial examples; the loss is
(sum of clean losses + lambda * sum of adversarial losses) / (n_clean + lambda * n_adv);
each adversarial example gets its own eps from a normal N(0, sigma) folded to [0, inf)
and truncated to [0, eps_max]. Examples are crafted with the current weights.

BatchNorm: examples are crafted in eval mode (running statistics, nothing updated),
the same function robench attacks at evaluation time, so crafting never moves the
BN buffers; the update step then runs in train mode on the mixed batch.

Under torchrun (``robench.core.distributed``) the model trains in DistributedDataParallel and
every global minibatch of ``batch_size`` examples is split over the ranks by
``distributed.shard`` (strided), so the global batch and the order stay those of one process:

- Each rank crafts its own adversarial examples (the global positions below k) on the
  module inside DDP, not through DDP's forward: that forward would prepare DDP's gradient
  reduction for parameters that are frozen while crafting. Ranks agree on the weights
  (DDP keeps them equal) and on the running statistics (``sync_buffers`` before crafting).
- Every rank draws the whole minibatch's eps values and PGD start noise from the same
  seeded generator and keeps its own rows, so each example's draws are those of one process.
- DDP averages gradients over ranks, so each rank's loss is its share of the global
  numerator divided by the global denominator (n_clean + lam * n_adv of the whole minibatch)
  and multiplied by the world size: the average is then the gradient of the one-process
  loss, whatever the split, uneven last minibatch included.
- BatchNorm: SyncBatchNorm on GPUs, so the update normalizes with the whole minibatch's
  statistics as one process does; torch has no CPU kernels for it, so on gloo/CPU each rank
  normalizes with its own shard's statistics and rank 0's running statistics are kept.
- Rank 0 alone renders progress and writes the checkpoint; losses, accuracies and the
  validation accuracy are summed over ranks, so every rank returns the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench import __version__
from robench.attacks import REGISTRY
from robench.attacks.base import LabelKind, Labels, attack_mode, project, to_unit
from robench.attacks.iterative import descend
from robench.core.distributed import (
    LOCAL,
    Dist,
    all_sum,
    data_parallel,
    shard,
    sync_buffers,
    syncs_batchnorm,
    unwrap,
)
from robench.core.outputs import check_output
from robench.data import InputConfig, Source, channel_note, has_test_split, open_source, read_class_list, subset
from robench.engine import correct
from robench.errors import FieldError, FieldNote
from robench.models import Normalized, check_name, training_model
from robench.models.checkpoint import input_metadata, save_checkpoint
from robench.models.recipe import RECORDED, TrainConfig


def sample_eps(n: int, eps_max: float, sigma: float, gen: torch.Generator) -> Tensor:
    """n eps values from |N(0, sigma)| truncated to [0, eps_max], by inverse CDF (1/255 units)."""
    if eps_max == 0:
        return torch.zeros(n)
    top = math.erf(eps_max / (sigma * math.sqrt(2)))
    u = torch.rand(n, generator=gen, dtype=torch.float64) * top
    return (sigma * math.sqrt(2) * torch.erfinv(u)).clamp(0, eps_max).float()


def mixed_loss_sum(clean_logits: Tensor, clean_y: Tensor, adv_logits: Tensor, adv_y: Tensor, lam: float) -> Tensor:
    """sum clean CE + lam * sum adversarial CE: the numerator of the paper's loss (it adds up over ranks)."""
    total = F.cross_entropy(clean_logits, clean_y, reduction="sum")
    return total + lam * F.cross_entropy(adv_logits, adv_y, reduction="sum")


@dataclass(frozen=True)
class Crafting:
    """How training crafts with one attack, from the building blocks of ``robench.attacks``.

    Every attack is sign-gradient steps projected into each example's own eps-ball (the
    registry's attacks share one eps per call, so training cannot call them): one step of
    eps, or ``steps`` steps of 2.5 eps / steps (Madry et al.'s size), from x or a random
    start; up the loss of the true or predicted label, or down that of the least-likely class.
    """

    least_likely: bool = False  # step l.l.: toward the least-likely class, whatever --label says
    iterative: bool = False
    random_start: bool = False


def crafting(attack: str) -> Crafting:
    """What the attack registry says of ``attack``: targeted, single step or iterative, random start."""
    entry = REGISTRY[attack]
    return Crafting(least_likely=entry.targeted, iterative=not entry.single_step,
                    random_start=bool(getattr(entry.config(), "random_start", False)))


def _target(model: nn.Module, x: Tensor, y: Tensor, how: Crafting, label: str) -> Tensor:
    """The class each example is pushed away from (toward, for step l.l.); a forward only when needed."""
    if not how.least_likely and label == "true":
        return y
    with torch.no_grad():
        labels = Labels.from_logits(model(x), y)
    return labels.least_likely if how.least_likely else labels.pick(cast(LabelKind, label))  # validate() checked it


def start_noise(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """PGD's random start in [-1, 1) (times eps), drawn on the CPU so any device gets the same numbers."""
    return torch.rand(shape, generator=gen) * 2 - 1


@dataclass(frozen=True)
class Draws:
    """The random numbers of a global minibatch's k adversarial examples, the same on every rank."""

    eps: Tensor  # [k], 1/255 units
    noise: Tensor | None  # [k, C, H, W]: pgd's start; None for the other attacks

    def take(self, rows: Tensor) -> Draws:
        """The draws of some of the k examples (this rank's)."""
        return Draws(self.eps[rows], None if self.noise is None else self.noise[rows])


def draw(k: int, image_shape: tuple[int, ...], cfg: TrainConfig, gen: torch.Generator) -> Draws:
    """eps, then pgd's start noise, for all k adversarial examples of a global minibatch.

    Every rank draws the whole minibatch's numbers from its identically seeded generator and
    keeps its own rows: generators stay in step and an example's draws do not depend on the
    number of processes (the cost: each rank draws k images of noise for pgd).
    """
    eps = torch.full((k,), float(cfg.eps_max)) if cfg.eps_dist == "fixed" else \
        sample_eps(k, cfg.eps_max, cfg.eps_sigma, gen)
    return Draws(eps, start_noise((k, *image_shape), gen) if crafting(cfg.train_attack).random_start else None)


def craft_batch(model: nn.Module, x: Tensor, y: Tensor, draws: Draws, cfg: TrainConfig) -> Tensor:
    """Adversarial versions of x with each example's own eps and start (``draws``), using the current weights.

    What to do comes from the attack registry (``crafting``); the steps are the attacks' own
    (``descend``: sign gradient, projection into the eps-ball and [0, 1]), with a per-example eps tensor.
    """
    how = crafting(cfg.train_attack)
    unit = to_unit(draws.eps).view(-1, 1, 1, 1).to(x.device)
    steps, size = (cfg.steps, 2.5 * unit / cfg.steps) if how.iterative else (1, unit)
    with attack_mode(model):
        target = _target(model, x, y, how, cfg.label)
        start = x if draws.noise is None else project(x + unit * draws.noise.to(x.device), x, unit)
        return descend(model, x, start, target, unit, -size if how.least_likely else size, steps)


@dataclass
class EpochStats:
    """What the progress bar shows after each step."""

    epoch: int
    seen: int
    total: int
    loss: float
    accuracy: float | None  # on the clean part of the minibatches; None while they held none (adv_fraction 1)
    adv_accuracy: float | None = None  # on the adversarial part, as crafted; None while there was none


Progress = Callable[[EpochStats], None]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, cfg: TrainConfig,
               gen: torch.Generator, dist: Dist = LOCAL, batch_size: int | None = None,
               ) -> tuple[float, int, int, int, int]:
    """One minibatch: craft the first k examples, then one update on the mixed batch.

    Under DDP, (x, y) is this rank's shard of a global minibatch of ``batch_size`` examples
    (by default one process's whole batch), whose first k positions are adversarial.
    Returns this rank's share of the loss (shares add up to the minibatch's loss), its
    number of clean examples and how many of them were right, then the same two counts for its
    adversarial examples (scored before the update, on the logits the loss was taken on).
    """
    n = len(y) if batch_size is None else batch_size
    k = 0 if cfg.train_attack == "none" else round(cfg.adv_fraction * n)
    adv = _adversarial(unwrap(model), x, y, k, cfg, gen, dist)
    clean_x, clean_y, adv_y = x[len(adv):], y[len(adv):], y[: len(adv)]
    model.train()
    logits = model(torch.cat([clean_x, adv]) if len(adv) else clean_x)
    clean, adv_logits = logits[: len(clean_y)], logits[len(clean_y) :]
    loss = mixed_loss_sum(clean, clean_y, adv_logits, adv_y, cfg.lam) / ((n - k) + cfg.lam * k)
    opt.zero_grad(set_to_none=True)
    (loss * dist.world_size if dist.is_distributed else loss).backward()  # DDP divides by world_size
    opt.step()
    return (float(loss.detach()), len(clean_y), int(correct(clean.argmax(1), clean_y).sum()), len(adv_y),
            int(correct(adv_logits.argmax(1), adv_y).sum()))


def _adversarial(module: nn.Module, x: Tensor, y: Tensor, k: int, cfg: TrainConfig, gen: torch.Generator,
                 dist: Dist) -> Tensor:
    """This rank's adversarial examples: its first rows, the global positions below k (maybe none)."""
    if not k:
        return x[:0]
    sync_buffers(module, dist)  # every rank crafts against rank 0's running statistics
    mine = shard(k, dist, allow_empty=True)
    draws = draw(k, tuple(x.shape[1:]), cfg, gen).take(mine)
    n = len(mine)
    return craft_batch(module, x[:n], y[:n], draws, cfg) if n else x[:0]


@dataclass
class TrainResult:
    """Per-epoch history (tidy: one row per epoch) and the checkpoint's metadata."""

    history: pd.DataFrame
    meta: dict[str, Any]


def accuracy(model: nn.Module, source: Source, input_cfg: InputConfig, batch_size: int = 256,
             dist: Dist = LOCAL) -> float:
    """Clean top-1 accuracy of a [0, 1]-input model on a whole source; each rank scores its shard.

    Rank 0's buffers (BatchNorm statistics) are copied to every rank first, so the figure is
    that of rank 0's model, the one a checkpoint holds.
    """
    sync_buffers(model, dist)
    model.eval()
    device = next(model.parameters()).device
    hits = 0
    with torch.inference_mode():
        for b in source.batches(input_cfg, batch_size, shard(len(source.ids), dist)):
            hits += int(correct(model(b.images.to(device)).argmax(1), b.labels.to(device)).sum())
    (total,) = all_sum([hits], dist)
    return total / len(source.ids)


def _meta(cfg: TrainConfig, model: Normalized, input_cfg: InputConfig, source: Source, extra: dict) -> dict:
    """The checkpoint's metadata; mean/std as the wrapper applies them (float32)."""
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    return {
        "arch": cfg.arch, "num_classes": source.num_classes, "classes": source.classes,
        **input_metadata(input_cfg, mean, std), "dataset": f"{cfg.data}:train", "recipe": _recipe(cfg),
        "seed": cfg.seed, "robench_version": __version__, **extra,
    }


def _recipe(cfg: TrainConfig) -> dict[str, Any]:
    """The recipe as recorded; fields added since the zoo was built are left out at their defaults (its bytes stay).

    The numbering itself is recorded anyway, as the checkpoint's ``classes``.
    """
    recipe = {RECORDED.get(k, k): v for k, v in dataclasses.asdict(cfg).items()}  # input_size, attack: as ever
    for name, default in (("class_order", "natural"), ("classes", None), ("val_fraction", 0.1),
                          ("eps_dist", "folded_normal")):
        if recipe[name] == default:
            del recipe[name]
    return recipe


def _launch_meta(dist: Dist) -> dict[str, Any]:
    """How many processes trained (absent for one, so one-process checkpoints keep their bytes)."""
    if not dist.is_distributed:
        return {}
    return {"world_size": dist.world_size, "backend": dist.backend, "sync_batchnorm": syncs_batchnorm(dist)}


def short_tail(n: int, batch_size: int, dist: Dist = LOCAL) -> int:
    """How many examples each epoch leaves out: a last minibatch with fewer than 2 per process, else none.

    BatchNorm cannot train on one example ("Expected more than 1 value per channel"), and
    under DDP every process must take part in every step; the left-out examples are drawn
    anew each epoch (the order is shuffled), so every one is trained on.
    """
    last = n % batch_size
    return last if 0 < last < 2 * dist.world_size else 0


def check_split(n: int, batch_size: int, dist: Dist) -> None:
    """Every process needs at least 2 examples of every minibatch it trains on (BatchNorm, DDP)."""
    if batch_size < 2 * dist.world_size:
        raise FieldError("batch_size", f"{{name}} {batch_size} gives some of the {dist.world_size} processes fewer "
                                       f"than 2 examples; BatchNorm needs 2: use {{name}} {2 * dist.world_size} or "
                                       f"more")
    if n - short_tail(n, batch_size, dist) == 0:
        raise FieldError("limit", f"{n} training samples give some of the {dist.world_size} processes fewer than 2 "
                                  f"examples; use {{name}} {2 * dist.world_size} or more")


def _seed_rank(seed: int, dist: Dist) -> None:
    """Dropout and drop-path draw from torch's global generator: one stream per rank, not one mask for all."""
    if dist.is_distributed:
        torch.manual_seed(int(np.random.SeedSequence([seed, dist.rank]).generate_state(1)[0]))


def open_train_source(cfg: TrainConfig, warn: Callable[[str], None] | None = None) -> Source:
    """The training split, its classes numbered by ``cfg.classes`` (a file) or ``cfg.class_order``."""
    classes = read_class_list(Path(cfg.classes)) if cfg.classes is not None else None
    return open_source(cfg.data, "train", cfg.limit, cfg.seed, class_order=cfg.class_order, classes=classes,
                       classes_from=f"the classes file {cfg.classes}", warn=warn)


def split_sources(cfg: TrainConfig, warn: Callable[[str], None] | None = None) -> tuple[Source, Source,
                                                                                         dict[str, Any]]:
    """The training data, the data its test accuracy is measured on, and what the checkpoint says of the latter.

    A folder without a val/ split would otherwise be scored on its own training images: a
    seeded ``val_fraction`` of it is held out instead (or, at 0, the output says so).
    """
    source = open_train_source(cfg, warn)
    if has_test_split(cfg.data):
        return source, open_source(cfg.data, "test", classes=source.classes, classes_from="the training classes"), {}
    n = len(source.ids)
    if cfg.val_fraction == 0:
        if warn is not None:
            warn(FieldNote(f"{cfg.data} has no val/ split and {{val_fraction}} is 0: the test accuracy is measured "
                           f"on the training images", "val_fraction"))
        return source, source, {"validation": {"split": "train", "n": n}}
    held = max(1, round(cfg.val_fraction * n))
    if n - held < 2:
        raise FieldError("val_fraction", f"{{name}} {cfg.val_fraction:g} holds out {held} of the {n} images of "
                                         f"{cfg.data}, leaving {n - held} to train on; lower {{name}} or add images")
    rows = np.random.default_rng(cfg.seed).permutation(n)
    val, kept = np.sort(rows[:held]), np.sort(rows[held:])
    return subset(source, kept), subset(source, val), {
        "validation": {"split": "held_out", "fraction": cfg.val_fraction, "n": held, "seed": cfg.seed}}


def train(cfg: TrainConfig, out: Path, progress: Progress | None = None, dist: Dist = LOCAL,
          warn: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``cfg.arch`` with the paper's recipe; the checkpoint is rewritten after every epoch.

    An interrupted run therefore leaves the last finished epoch on disk. Under torchrun pass
    ``robench.core.distributed.setup()``'s Dist: every rank calls this, rank 0 writes and reports.
    ``warn`` hears when an image folder's class folders sort differently in timm's and torchvision's order,
    and when RGB images train a 1-channel model as their luminance.
    """
    cfg.validate()
    if dist.is_main:
        check_output(out, (".safetensors",), "out", regular=True)
    check_name(cfg.arch)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    source, val_source, validation = split_sources(cfg, warn if dist.is_main else None)
    check_split(len(source.ids), cfg.batch_size, dist)
    tail = short_tail(len(source.ids), cfg.batch_size, dist)
    if tail and warn is not None and dist.is_main:
        warn(f"{len(source.ids)} training samples in minibatches of {cfg.batch_size} end each epoch with {tail}, "
             f"fewer than 2 per process (BatchNorm cannot train on one): each epoch leaves {tail} out, drawn anew")
    model, input_cfg = training_model(cfg.arch, source.num_classes, source.native, cfg.image_size)
    note = channel_note(cfg.arch, input_cfg.channels, source)
    if note and warn is not None and dist.is_main:
        warn(note)
    if cfg.train_attack != "none" and (cfg.adv_fraction == 0 or cfg.lam == 0) and warn is not None and dist.is_main:
        field = "adv_fraction" if cfg.adv_fraction == 0 else "lam"
        warn(FieldNote(f"{{{field}}} 0 leaves no adversarial example in the loss: this trains plainly, though the "
                       f"checkpoint records {cfg.train_attack} training", field))
    net = data_parallel(model.to(dist.device), dist)
    _seed_rank(cfg.seed, dist)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    progress, history = progress if dist.is_main else None, []
    for epoch in range(1, cfg.epochs + 1):
        row = _epoch(net, opt, source, input_cfg, cfg, gen, epoch, progress, dist)
        check_finite(model, epoch, cfg.lr, cfg.lam)
        history.append(row)
        if epoch < cfg.epochs and dist.is_main:  # the last epoch is written below, with its validation accuracy
            save_checkpoint(out, model.model, _meta(cfg, model, input_cfg, source, {"epochs_done": epoch,
                                                                                    **_measured(row)}))
    val = accuracy(model, val_source, input_cfg, dist=dist)
    extra = {"epochs_done": cfg.epochs, **_measured(history[-1]), "val_accuracy": val, **validation,
             **({"left_out_per_epoch": tail} if tail else {}), **_launch_meta(dist)}
    meta = _meta(cfg, model, input_cfg, source, extra)
    if dist.is_main:
        save_checkpoint(out, model.model, meta)
    return TrainResult(pd.DataFrame(history), meta)


def check_finite(model: nn.Module, epoch: int, lr: float, lam: float = 0.3) -> None:
    """Refuse weights that hold NaN or inf after an epoch, before they are written: they measure nothing.

    A learning rate too large for the model makes the updates overflow; the checkpoint then
    keeps the last epoch whose weights were finite.
    """
    state = model.state_dict().values()
    if all(bool(torch.isfinite(t).all()) for t in state if t.is_floating_point()):
        return
    also = f" or the adversarial loss's weight lam (now {lam:g})" if lam > 1 else ""
    raise FieldError("lr", f"training diverged in epoch {epoch}: the weights hold NaN or inf; lower {{name}} "
                           f"(now {lr:g}){also}; the checkpoint, if any, holds the last finite epoch")


def local_rows(order: Tensor, batch_size: int, dist: Dist) -> tuple[Tensor, int]:
    """This rank's rows of every global minibatch of ``order``, and its share of a full minibatch.

    Cut into chunks of that share, the rows give back this rank's part of each minibatch
    (only the last may be shorter), so one ``source.batches`` call streams them all.
    """
    parts = [rows[shard(len(rows), dist)] for rows in order.split(batch_size)]
    return torch.cat(parts), len(shard(batch_size, dist))


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, source: Source, input_cfg: InputConfig,
           cfg: TrainConfig, gen: torch.Generator, epoch: int, progress: Progress | None,
           dist: Dist = LOCAL) -> dict[str, Any]:
    order = torch.randperm(len(source.ids), generator=gen)
    order = order[: len(order) - short_tail(len(order), cfg.batch_size, dist)]
    sizes = [len(rows) for rows in order.split(cfg.batch_size)]
    rows, share = local_rows(order, cfg.batch_size, dist)
    device = next(model.parameters()).device
    seen = 0
    counts = [0, 0, 0, 0]  # clean examples, clean right, adversarial examples, adversarial right
    loss_sum = 0.0
    if progress is not None:  # the epoch's start: its examples/s count from here
        progress(EpochStats(epoch, 0, len(order), 0.0, None))
    for size, batch in zip(sizes, source.batches(input_cfg, share, rows), strict=True):
        step = train_step(model, opt, batch.images.to(device), batch.labels.to(device), cfg, gen, dist, size)
        loss, *step_counts = all_sum(step, dist)  # one tiny all-reduce per step, for exact global figures
        counts = [total + int(c) for total, c in zip(counts, step_counts, strict=True)]
        seen += size
        loss_sum += loss * size
        if progress is not None:
            progress(EpochStats(epoch, seen, len(order), loss_sum / seen, *_shares(counts)))
    clean, adv = _shares(counts)
    return {"epoch": epoch, "loss": loss_sum / seen, "train_accuracy": clean, "train_adv_accuracy": adv}


def _measured(row: dict[str, Any]) -> dict[str, Any]:
    """An epoch's figures for the checkpoint: an accuracy with nothing to measure (None) is left out."""
    return {key: value for key, value in row.items() if value is not None}


def _shares(counts: list[int]) -> tuple[float | None, float | None]:
    """Clean and adversarial accuracy from (clean, clean right, adversarial, adversarial right); None where none."""
    clean, clean_right, adv, adv_right = counts
    return (clean_right / clean if clean else None), (adv_right / adv if adv else None)
