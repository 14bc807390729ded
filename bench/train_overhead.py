"""Benchmark: one robench adversarial-training epoch against a bare-torch loop doing the same passes.

The recipe is robench's default step_ll training (Kurakin et al. 2017, section 3) with
TrainConfig(arch="test_efficientnet", train_attack="step_ll", epochs=1): digits train split (1437
images), 32 px, batch 64, half of each minibatch replaced by step_ll examples with per-example eps
from |N(0, 8)| truncated to [0, 16], loss weight lambda 0.3, AdamW.

robench side: ``robench.train.loop._epoch`` on the model from ``robench.models.training_model`` and the source
from ``open_source("digits", "train")``; model creation, data loading, checkpoint writing and the
final validation of ``train()`` are outside the timed region (``train()`` is timed end to end once,
separately, for context).

bare side: a plain loop on the same wrapped model and the same uint8->float source tensors, the
same shuffled order (``torch.randperm`` with a generator seeded alike) and, per batch: resize to
32 px, draw k eps values, an eval-mode no-grad forward for the least-likely labels, an eval-mode
forward+backward for the input gradient, then a train-mode forward+backward on the mixed batch
with the paper's weighted loss and an AdamW step. Data preparation is inside the timed region on
both sides (robench's ``_epoch`` pulls its batches itself).

Honesty checks: a forward hook counts the passes on both sides (and an optimizer hook the steps);
the counts must be equal and match the schedule, and both sides must end with bit-identical
weights and BatchNorm buffers (``torch.equal`` on every state_dict entry) and identical epoch
loss and accuracy. Runs alternate between the sides (order flipped every round); each run starts
from the same initial weights and a fresh AdamW.

Threads: ``torch.set_num_threads(1)`` by default, for both sides and the end-to-end run. On a
shared 2-core machine two intra-op threads make epoch times swing 3x with other processes' load
(one thread: ~5 s per epoch, steady; two threads: 9-30 s); ``--threads 0`` keeps torch's default.

    python bench/train_overhead.py                          # ~1 minute on 2 CPU cores
    python bench/train_overhead.py --repeats 7              # tighter medians
    python bench/train_overhead.py --threads 0 --no-e2e     # torch's default thread count
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.data import InputConfig, TensorSource, open_source
from robench.models import training_model
from robench.models.recipe import TrainConfig
from robench.train.loop import _epoch, train

TARGET = 1.15  # acceptable robench / bare ratio
CFG = TrainConfig(arch="test_efficientnet", train_attack="step_ll", epochs=1)

# --- pass counting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Passes:
    """Inference forwards, eval-mode forward+backward, train-mode forward+backward, optimizer steps."""

    inf_fwd: int = 0
    eval_fwd: int = 0
    eval_bwd: int = 0
    train_fwd: int = 0
    train_bwd: int = 0
    steps: int = 0

    def __str__(self) -> str:
        return (f"{self.inf_fwd} inf, {self.eval_fwd}+{self.eval_bwd} eval fwd+bwd, "
                f"{self.train_fwd}+{self.train_bwd} train fwd+bwd, {self.steps} steps")


class PassCounter:
    """A forward hook on the wrapped model (the same for both sides, so its cost cancels out)."""

    def __init__(self, model: nn.Module) -> None:
        self.counts = dict.fromkeys(Passes.__dataclass_fields__, 0)
        self.handle = model.register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if not (torch.is_grad_enabled() and output.requires_grad):
            self.counts["inf_fwd"] += 1
            return
        mode = "train" if module.training else "eval"
        self.counts[f"{mode}_fwd"] += 1
        output.register_hook(lambda grad: self._bump(f"{mode}_bwd"))

    def _bump(self, key: str) -> None:
        self.counts[key] += 1

    def watch(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Count ``opt``'s steps too."""
        opt.register_step_post_hook(lambda *_: self._bump("steps"))
        return opt

    def take(self) -> Passes:
        """The counts since the last take, then reset."""
        p = Passes(**self.counts)
        self.counts = dict.fromkeys(self.counts, 0)
        return p


def expected_passes(n: int, batch: int) -> Passes:
    """Per batch: 1 inference forward, 1 eval fwd+bwd (input gradient), 1 train fwd+bwd, 1 step."""
    b = math.ceil(n / batch)
    return Passes(b, b, b, b, b, b)


# --- the bare-torch baseline ---------------------------------------------------------------


def bare_epoch(model: nn.Module, opt: torch.optim.Optimizer, images: Tensor, labels: Tensor, scale: float,
               size: tuple[int, int], mode: str, gen: torch.Generator) -> dict[str, float]:
    """One epoch of the paper's recipe (step_ll, true labels for the update) written out in plain torch."""
    eps_max, sigma, lam, frac, batch = CFG.eps_max, CFG.eps_sigma, CFG.lam, CFG.adv_fraction, CFG.batch_size
    top = math.erf(eps_max / (sigma * math.sqrt(2)))
    params = list(model.parameters())
    seen = n_clean = correct = 0
    loss_sum = 0.0
    for rows in torch.randperm(len(labels), generator=gen).split(batch):
        x = images[rows].float() / scale
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).clamp(0.0, 1.0)
        x = x.expand(-1, 3, -1, -1).contiguous()
        y = labels[rows]
        b = len(y)
        k = round(frac * b)
        u = torch.rand(k, generator=gen, dtype=torch.float64) * top
        eps = (sigma * math.sqrt(2) * torch.erfinv(u)).clamp(0, eps_max).float()
        # craft with the current weights: eval mode, parameters frozen
        model.eval()
        for p in params:
            p.requires_grad_(False)
        xa = x[:k]
        with torch.no_grad():
            ll = model(xa).argmin(1)
        xg = xa.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), ll, reduction="sum"), xg)
        adv = (xa - (eps / 255).view(-1, 1, 1, 1) * g.sign()).clamp(0.0, 1.0)
        for p in params:
            p.requires_grad_(True)
        # one update on the mixed batch
        model.train()
        logits = model(torch.cat([x[k:], adv]))
        clean = logits[: b - k]
        loss = (F.cross_entropy(clean, y[k:], reduction="sum")
                + lam * F.cross_entropy(logits[b - k:], y[:k], reduction="sum")) / (b - k + lam * k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen, n_clean = seen + b, n_clean + b - k
        correct += int((clean.argmax(1) == y[k:]).sum())
        loss_sum += float(loss.detach()) * b
    return {"epoch": 1, "loss": loss_sum / seen, "train_accuracy": correct / max(1, n_clean)}


# --- the two sides ---------------------------------------------------------------------------


@dataclass
class Setup:
    """The wrapped model, its initial state, the source and its input config."""

    model: nn.Module
    initial: dict[str, Tensor]
    source: TensorSource
    input_cfg: InputConfig
    counter: PassCounter


@dataclass
class Side:
    """Timings, pass counts and final state of one side."""

    name: str
    run: Callable[[Setup, torch.optim.Optimizer, torch.Generator, TensorSource], dict[str, float]]
    times: list[float] = field(default_factory=list)
    passes: set[Passes] = field(default_factory=set)
    state: dict[str, Tensor] | None = None
    stats: dict[str, float] | None = None


def run_robench(s: Setup, opt: torch.optim.Optimizer, gen: torch.Generator, source: TensorSource) -> dict:
    return _epoch(s.model, opt, source, s.input_cfg, CFG, gen, 1, None)


def run_bare(s: Setup, opt: torch.optim.Optimizer, gen: torch.Generator, source: TensorSource) -> dict:
    return bare_epoch(s.model, opt, source.images, source.labels, source.scale, s.input_cfg.size,
                      s.input_cfg.interpolation, gen)


def fresh(s: Setup) -> tuple[torch.optim.Optimizer, torch.Generator]:
    """Initial weights and buffers back in place (same Parameter objects), a new AdamW, a seeded generator."""
    s.model.load_state_dict(s.initial)
    s.model.train()
    torch.manual_seed(CFG.seed)
    opt = s.counter.watch(torch.optim.AdamW(s.model.parameters(), lr=CFG.lr, weight_decay=CFG.weight_decay))
    return opt, torch.Generator().manual_seed(CFG.seed)


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def timed(side: Side, s: Setup) -> None:
    """One timed epoch; the final state must equal the side's earlier runs."""
    opt, gen = fresh(s)
    s.counter.take()
    t = time.perf_counter()
    stats = side.run(s, opt, gen, s.source)
    side.times.append(time.perf_counter() - t)
    side.passes.add(s.counter.take())
    state = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
    if side.state is not None:
        assert same_state(side.state, state) and side.stats == stats, f"{side.name}: run-to-run drift"
    side.state, side.stats = state, stats


def setup() -> Setup:
    torch.manual_seed(CFG.seed)  # as train() does before building the model
    source = open_source(CFG.data, "train")
    assert isinstance(source, TensorSource)
    cfg = CFG.validate()
    model, input_cfg = training_model(cfg.arch, source.num_classes, source.native, cfg.image_size)
    assert input_cfg.channels == 3 and source.images.shape[1] == 1
    initial = copy.deepcopy(model.state_dict())
    return Setup(model, initial, source, input_cfg, PassCounter(model))


def warm_up(s: Setup, rows: int) -> None:
    """Both sides once on the first ``rows`` images (a full and a ragged batch shape), untimed."""
    src = s.source
    part = TensorSource(src.name, src.images[:rows], src.labels[:rows], src.ids[:rows], src.num_classes, src.scale)
    for run in (run_robench, run_bare):
        opt, gen = fresh(s)
        run(s, opt, gen, part)
    s.counter.take()


def compare(s: Setup, repeats: int) -> tuple[Side, Side]:
    """Alternate robench and bare epochs (order flipped each round) so load hits both alike."""
    warm_up(s, 2 * CFG.batch_size + len(s.source.ids) % CFG.batch_size)
    rob, bare = Side("robench", run_robench), Side("bare", run_bare)
    for r in range(repeats):
        for side in (rob, bare) if r % 2 == 0 else (bare, rob):
            timed(side, s)
            print(f"  round {r + 1}: {side.name} {side.times[-1]:.2f} s", file=sys.stderr, flush=True)
    return rob, bare


def end_to_end() -> float:
    """train() with epochs=1 as the CLI runs it: model build, data load, epoch, checkpoints, validation."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train(CFG, Path(tmp) / "bench.safetensors")
        return time.perf_counter() - t


# --- report --------------------------------------------------------------------------------


def summarize(s: Setup, rob: Side, bare: Side) -> tuple[float, bool]:
    n, batches = len(s.source.ids), math.ceil(len(s.source.ids) / CFG.batch_size)
    want = expected_passes(n, CFG.batch_size)
    same_passes = rob.passes == bare.passes == {want}
    same_weights = same_state(rob.state, bare.state)
    trained = not same_state(rob.state, s.initial)
    same_stats = rob.stats == bare.stats
    ratio = statistics.median(rob.times) / statistics.median(bare.times)
    data = f"{n} img / {batches} batches"
    print(f"\n{'side':8} {'data':22} {'runs':>4} {'median s':>9} {'min s':>8}  passes (per run)")
    for side in (rob, bare):
        passes = ", ".join(str(p) for p in side.passes)
        print(f"{side.name:8} {data:22} {len(side.times):4} {statistics.median(side.times):9.2f} "
              f"{min(side.times):8.2f}  {passes}")
    verdict = "OK" if ratio <= TARGET else f"ABOVE {TARGET:.2f}x"
    print(f"ratio robench/bare (median) {ratio:.3f}x [{verdict}]; min/min {min(rob.times) / min(bare.times):.3f}x")
    print(f"passes equal: {same_passes} (expected {want})")
    print(f"final weights + BN buffers bit-identical (torch.equal, {len(rob.state)} entries): {same_weights}; "
          f"weights changed from init: {trained}")
    print(f"epoch stats identical: {same_stats} (robench {rob.stats}, bare {bare.stats})")
    return ratio, same_passes and same_weights and trained and same_stats


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per side (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; 0: torch's default)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end train() timing")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    how = f"set_num_threads({args.threads})" if args.threads else "torch default"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads ({how}, both sides); "
          f"recipe {CFG.arch} / {CFG.train_attack} / {CFG.data} train / {CFG.image_size} px / batch {CFG.batch_size} / "
          f"seed {CFG.seed}", file=sys.stderr)
    s = setup()
    try:
        rob, bare = compare(s, args.repeats)
    finally:
        s.counter.handle.remove()
    ratio, ok = summarize(s, rob, bare)
    if not args.no_e2e:
        total = end_to_end()
        print(f"train(epochs=1) end to end: {total:.2f} s (the timed epoch is {statistics.median(rob.times):.2f} s "
              f"of it; the rest is model build, data load, checkpoints, validation)")
    print(f"\nrobench/bare: {ratio:.3f}x (target <= {TARGET:.2f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
