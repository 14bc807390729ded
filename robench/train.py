"""Adversarial training with the recipe of Kurakin, Goodfellow & Bengio (2017), section 3.

Each minibatch mixes clean and adversarial examples; the loss is
(sum of clean losses + lambda * sum of adversarial losses) / (n_clean + lambda * n_adv);
each adversarial example gets its own eps from a normal N(0, sigma) folded to [0, inf)
and truncated to [0, eps_max]. Examples are crafted with the current weights.

BatchNorm: examples are crafted in eval mode (running statistics, nothing updated),
the same function robench attacks at evaluation time, so crafting never moves the
BN buffers; the update step then runs in train mode on the mixed batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench import __version__
from robench.attacks.base import attack_mode, gradient_sign, project, to_unit
from robench.attacks.iterative import descend
from robench.checkpoint import save_checkpoint
from robench.data import InputConfig, Source, open_source
from robench.errors import RobenchError
from robench.models import Normalized, check_arch
from robench.report import check_output

TRAIN_ATTACKS = ("none", "step_ll", "fgsm", "bim", "pgd")
LABELS = ("true", "predicted")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (recorded in the checkpoint)."""

    arch: str = "test_resnet"
    data: str = "digits"
    input_size: int = 32
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    attack: str = "step_ll"
    label: str = "true"  # fgsm / bim / pgd: craft with true or predicted labels
    adv_fraction: float = 0.5
    lam: float = 0.3
    eps_max: float = 16.0  # 1/255 units
    eps_sigma: float = 8.0  # 1/255 units
    steps: int = 5  # bim / pgd
    limit: int | None = None
    seed: int = 0

    def validate(self) -> TrainConfig:
        """Raise a RobenchError naming the option for any value outside its range."""
        checks = [
            (self.attack in TRAIN_ATTACKS, "--attack", f"must be one of {', '.join(TRAIN_ATTACKS)}"),
            (self.label in LABELS, "--label", "must be true or predicted"),
            (0 <= self.adv_fraction <= 1, "--adv-fraction", "must lie in [0, 1]"),
            (self.lam >= 0, "--lam", "must be >= 0"),
            (0 <= self.eps_max <= 255, "--eps-max", "must lie in [0, 255] (1/255 units)"),
            (self.eps_sigma > 0, "--eps-sigma", "must be > 0"),
            (self.epochs >= 1, "--epochs", "must be >= 1"),
            (self.batch_size >= 2, "--batch-size", "must be >= 2"),
            (self.lr > 0, "--lr", "must be > 0"),
            (self.steps >= 1, "--steps", "must be >= 1"),
            (self.input_size >= 8, "--input-size", "must be >= 8"),
        ]
        for ok, option, rule in checks:
            if not ok:
                value = getattr(self, option[2:].replace("-", "_"))
                raise RobenchError(f"{option} {value!r} {rule}")
        return self


def sample_eps(n: int, eps_max: float, sigma: float, gen: torch.Generator) -> Tensor:
    """n eps values from |N(0, sigma)| truncated to [0, eps_max], by inverse CDF (1/255 units)."""
    if eps_max == 0:
        return torch.zeros(n)
    top = math.erf(eps_max / (sigma * math.sqrt(2)))
    u = torch.rand(n, generator=gen, dtype=torch.float64) * top
    return (sigma * math.sqrt(2) * torch.erfinv(u)).clamp(0, eps_max).float()


def mixed_loss(clean_logits: Tensor, clean_y: Tensor, adv_logits: Tensor, adv_y: Tensor, lam: float) -> Tensor:
    """(sum clean CE + lam * sum adversarial CE) / (n_clean + lam * n_adv), the paper's weighting."""
    total = F.cross_entropy(clean_logits, clean_y, reduction="sum")
    total = total + lam * F.cross_entropy(adv_logits, adv_y, reduction="sum")
    return total / (len(clean_y) + lam * len(adv_y))


def _target(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig) -> Tensor:
    """The class each example is pushed away from (or toward, for step_ll)."""
    if cfg.attack != "step_ll" and cfg.label == "true":
        return y
    with torch.no_grad():
        logits = model(x)
    return logits.argmin(1) if cfg.attack == "step_ll" else logits.argmax(1)


def craft(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """Adversarial versions of x with per-example eps (1/255 units), using the current weights.

    bim and pgd take ``cfg.steps`` steps of 2.5 eps / steps each (pgd from a random start).
    """
    unit = to_unit(eps).view(-1, 1, 1, 1).to(x.device)
    with attack_mode(model):
        target = _target(model, x, y, cfg)
        if cfg.attack in ("step_ll", "fgsm"):
            sign = -1.0 if cfg.attack == "step_ll" else 1.0
            return (x + sign * unit * gradient_sign(model, x, target)).clamp(0, 1)
        start = x
        if cfg.attack == "pgd":
            noise = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device)
            start = project(x + unit * noise, x, unit)
        return descend(model, x, start, target, unit, 2.5 * unit / cfg.steps, cfg.steps)


@dataclass
class EpochStats:
    """What the progress bar shows after each step."""

    epoch: int
    seen: int
    total: int
    loss: float
    accuracy: float  # on the clean part of the minibatches


Progress = Callable[[EpochStats], None]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, cfg: TrainConfig,
               gen: torch.Generator) -> tuple[float, int, int]:
    """One minibatch: craft the first k examples, then one update on the mixed batch.

    Returns the loss, the number of clean examples and how many of them were right.
    """
    k = 0 if cfg.attack == "none" else round(cfg.adv_fraction * len(y))
    parts = [x[k:]]
    if k:
        parts.append(craft(model, x[:k], y[:k], sample_eps(k, cfg.eps_max, cfg.eps_sigma, gen), cfg, gen))
    model.train()
    logits = model(torch.cat(parts) if k else x[k:])
    clean, adv = logits[: len(y) - k], logits[len(y) - k :]
    loss = mixed_loss(clean, y[k:], adv, y[:k], cfg.lam)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), len(y) - k, int((clean.argmax(1) == y[k:]).sum())


@dataclass
class TrainResult:
    """Per-epoch history (tidy: one row per epoch) and the checkpoint's metadata."""

    history: pd.DataFrame
    meta: dict[str, Any]


def _build(cfg: TrainConfig, num_classes: int) -> tuple[Normalized, InputConfig]:
    """The timm model wrapped to take [0, 1] pixels, with its own mean/std."""
    import timm
    from timm.data import resolve_model_data_config

    model = timm.create_model(cfg.arch, num_classes=num_classes)
    data_cfg = resolve_model_data_config(model)
    wrapped = Normalized(model, tuple(data_cfg["mean"]), tuple(data_cfg["std"]))
    size = (cfg.input_size, cfg.input_size)
    return wrapped, InputConfig(channels=3, size=size, interpolation=str(data_cfg["interpolation"]))


def accuracy(model: nn.Module, source: Source, input_cfg: InputConfig, batch_size: int = 256) -> float:
    """Clean top-1 accuracy of a [0, 1]-input model on a whole source."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for b in source.batches(input_cfg, batch_size):
            correct += int((model(b.images).argmax(1) == b.labels).sum())
    return correct / len(source.ids)


def _meta(cfg: TrainConfig, model: Normalized, input_cfg: InputConfig, source: Source, extra: dict) -> dict:
    return {
        "arch": cfg.arch, "num_classes": source.num_classes, "input_size": [3, *input_cfg.size],
        "mean": list(model.mean.flatten().tolist()), "std": list(model.std.flatten().tolist()),
        "interpolation": input_cfg.interpolation, "crop_pct": 1.0, "dataset": f"{cfg.data}:train",
        "recipe": dataclasses.asdict(cfg), "seed": cfg.seed, "robench_version": __version__, **extra,
    }


def train(cfg: TrainConfig, out: Path, progress: Progress | None = None) -> TrainResult:
    """Train ``cfg.arch`` with the paper's recipe; the checkpoint is rewritten after every epoch.

    An interrupted run therefore leaves the last finished epoch on disk.
    """
    cfg.validate()
    check_output(out, (".safetensors",), "--out")
    check_arch(cfg.arch)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    source = open_source(cfg.data, "train", cfg.limit, cfg.seed)
    model, input_cfg = _build(cfg, source.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        row = _epoch(model, opt, source, input_cfg, cfg, gen, epoch, progress)
        history.append(row)
        if epoch < cfg.epochs:  # the last epoch is written below, with its validation accuracy
            save_checkpoint(out, model.model, _meta(cfg, model, input_cfg, source, {"epochs_done": epoch, **row}))
    val = accuracy(model, open_source(cfg.data, "test"), input_cfg)
    meta = _meta(cfg, model, input_cfg, source, {"epochs_done": cfg.epochs, **history[-1], "val_accuracy": val})
    save_checkpoint(out, model.model, meta)
    return TrainResult(pd.DataFrame(history), meta)


def _epoch(model: Normalized, opt: torch.optim.Optimizer, source: Source, input_cfg: InputConfig,
           cfg: TrainConfig, gen: torch.Generator, epoch: int, progress: Progress | None) -> dict[str, Any]:
    order = torch.randperm(len(source.ids), generator=gen)
    seen = clean = correct = 0
    loss_sum = 0.0
    for batch in source.batches(input_cfg, cfg.batch_size, order):
        loss, n_clean, right = train_step(model, opt, batch.images, batch.labels, cfg, gen)
        seen, clean, correct = seen + len(batch.labels), clean + n_clean, correct + right
        loss_sum += loss * len(batch.labels)
        if progress is not None:
            progress(EpochStats(epoch, seen, len(source.ids), loss_sum / seen, correct / max(1, clean)))
    return {"epoch": epoch, "loss": loss_sum / seen, "train_accuracy": correct / max(1, clean)}
