"""Benchmark: robench's evaluation time against a bare-torch loop doing the same passes.

Two workloads, each timed both ways on the same wrapped model and the same batches in memory:

  (a) the zoo's resnet-base (timm test_resnet trained by robench on digits at 32 px), digits test split, batch 100;
  (b) timm resnet18 (random init, 10 classes) at 224 px on synthetic random images.

Both sides run the default suite (fgsm, step_ll, bim, iter_ll, pgd at eps 2, 4, 8, 16). A forward
hook counts the passes each side makes; the counts must be equal, and the per-sample predictions
must match bit for bit, so the ratio robench / bare measures only robench's own overhead.
Runs alternate between the two sides so that load from other processes falls on both alike.

    python bench/eval_overhead.py            # full run, ~8 minutes on 2 CPU cores
    python bench/eval_overhead.py --quick    # ~2 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench import engine
from robench.attacks import REGISTRY, attack_mode
from robench.attacks.suite import Suite, load_suite
from robench.data import Batch, TensorSource, open_source
from robench.engine import attack_noise
from robench.models import load_model, parse_spec
from robench.run.evaluate import EvalConfig, run_eval
from robench.run.runspec import RunSpec, load_models, parse_specs

TARGET = 1.15  # acceptable robench / bare ratio
SUITE_NAMES = ("fgsm", "step_ll", "bim", "iter_ll", "pgd")
SEED = 0

Record = Callable[[int, Tensor], None]  # (setting, logits) -> None


# --- pass counting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Passes:
    """Forward passes with autograd, backward passes through the model, inference forwards."""

    grad_fwd: int = 0
    backward: int = 0
    inf_fwd: int = 0

    def __str__(self) -> str:
        return f"{self.grad_fwd} fwd+{self.backward} bwd, {self.inf_fwd} inf"


class PassCounter:
    """A forward hook on the model: the same hook for both sides, so its cost cancels out."""

    def __init__(self, model: nn.Module) -> None:
        self.grad_fwd = self.backward = self.inf_fwd = 0
        self.handle = model.register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if torch.is_grad_enabled() and output.requires_grad:
            self.grad_fwd += 1
            output.register_hook(self._on_backward)
        else:
            self.inf_fwd += 1

    def _on_backward(self, grad: Tensor) -> None:
        self.backward += 1

    def take(self) -> Passes:
        """The counts since the last take, then reset."""
        p = Passes(self.grad_fwd, self.backward, self.inf_fwd)
        self.grad_fwd = self.backward = self.inf_fwd = 0
        return p


# --- the bare-torch baseline ---------------------------------------------------------------


def paper_steps(eps: float) -> int:
    """floor(min(eps + 4, 1.25 eps)) iterations, as robench's bim / iter_ll use."""
    return max(1, math.floor(min(eps + 4, 1.25 * eps) + 1e-9))


def grad_sign(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """One forward + backward for sign(d summed CE / d x)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), target, reduction="sum"), x)
    return g.sign()


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Into the eps-ball around x, then into [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def infer(model: nn.Module, x: Tensor) -> Tensor:
    """One inference forward."""
    with torch.inference_mode():
        return model(x)


def bare_single(model: nn.Module, x: Tensor, g: Tensor, eps: Sequence[float], record: Record, s: int) -> int:
    """fgsm / step_ll: one gradient given, one inference forward per eps."""
    for e in eps:
        record(s, infer(model, (x + e / 255 * g).clamp(0.0, 1.0)))
        s += 1
    return s


def bare_iterative(
    model: nn.Module, x: Tensor, target: Tensor, eps: Sequence[float], step: float, record: Record, s: int
) -> int:
    """bim / iter_ll: one trunk of sign steps at the largest eps; a smaller eps leaves it at the first
    step its own projection would change, and finishes alone (the same trajectories as one run per eps)."""
    runs = sorted(((e / 255, paper_steps(e)) for e in eps), reverse=True)
    done: dict[float, Tensor] = {}
    z, k, trunk = x, 0, list(runs)
    while trunk:
        done.update({e: z for e, n in trunk if n == k})
        trunk = [(e, n) for e, n in trunk if n != k]
        if not trunk:
            break
        moved = z + step * grad_sign(model, z, target)
        nxt = project(moved, x, trunk[0][0])
        for e, n in trunk[1:]:
            own = project(moved, x, e)
            if not torch.equal(own, nxt):
                for _ in range(n - k - 1):
                    own = project(own + step * grad_sign(model, own, target), x, e)
                done[e] = own
        trunk = [(e, n) for e, n in trunk if e not in done]
        z, k = nxt, k + 1
    for e in eps:
        record(s, infer(model, done[e / 255]))
        s += 1
    return s


def bare_pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float], noise: Tensor, record: Record, s: int
) -> int:
    """pgd: uniform random start (one [-1, 1] draw scaled per eps), 10 steps of 2.5 eps / 10 per eps."""
    for e in eps:
        unit, step = e / 255, 2.5 * e / 10 / 255
        x_adv = (x + unit * noise).clamp(0.0, 1.0)
        for _ in range(10):
            x_adv = project(x_adv + step * grad_sign(model, x_adv, y), x, unit)
        record(s, infer(model, x_adv))
        s += 1
    return s


def bare_batch(model: nn.Module, x: Tensor, y: Tensor, eps: dict[str, tuple[float, ...]], noise: Tensor,
               record: Record) -> None:
    """The default suite on one batch, in robench's setting order."""
    logits = infer(model, x)
    record(0, logits)
    ll = logits.argmin(1)
    s = bare_single(model, x, grad_sign(model, x, y), eps["fgsm"], record, 1)
    s = bare_single(model, x, -grad_sign(model, x, ll), eps["step_ll"], record, s)
    s = bare_iterative(model, x, y, eps["bim"], 1 / 255, record, s)
    s = bare_iterative(model, x, ll, eps["iter_ll"], -1 / 255, record, s)
    bare_pgd(model, x, y, eps["pgd"], noise, record, s)


def bare_eval(model: nn.Module, batches: list[Batch], ids: list[str], suite: Suite) -> tuple[np.ndarray, np.ndarray]:
    """The plain loop: frozen parameters, eval mode, PGD noise seeded per sample as robench seeds it."""
    n = len(ids)
    eps = {a.name: a.eps for a in suite.attacks}
    settings = 1 + sum(len(v) for v in eps.values())
    pred = torch.full((settings, n), -1, dtype=torch.int32)
    top5 = torch.zeros((settings, n), dtype=torch.bool)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        for b in batches:

            def record(s: int, logits: Tensor, rows: Tensor = b.rows, y: Tensor = b.labels) -> None:
                pred[s, rows] = logits.argmax(1).int()
                top5[s, rows] = (logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]).any(1)

            noise = attack_noise(SEED, "pgd", [ids[r] for r in b.rows.tolist()]).uniform_like(b.images)
            bare_batch(model, b.images, b.labels, eps, noise, record)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return pred.numpy(), top5.numpy()


# --- workloads and timing ------------------------------------------------------------------


@dataclass
class Workload:
    """One model, its batches (already in memory) and the suite."""

    name: str
    model: nn.Module
    batches: list[Batch]
    ids: list[str]
    suite: Suite


@dataclass
class Side:
    """Timings, pass counts and outputs of one side of one workload."""

    times: list[float] = field(default_factory=list)
    passes: set[Passes] = field(default_factory=set)
    outputs: tuple[np.ndarray, np.ndarray] | None = None


def run_robench(w: Workload) -> tuple[np.ndarray, np.ndarray]:
    out = engine.evaluate(w.model, w.batches, w.ids, w.suite, seed=SEED)
    return out.pred, out.top5


def run_bare(w: Workload) -> tuple[np.ndarray, np.ndarray]:
    return bare_eval(w.model, w.batches, w.ids, w.suite)


def timed(side: Side, fn: Callable[[Workload], tuple[np.ndarray, np.ndarray]], w: Workload,
          counter: PassCounter) -> None:
    """One timed run; outputs must equal the side's earlier runs."""
    counter.take()
    torch.manual_seed(SEED)
    t = time.perf_counter()
    outputs = fn(w)
    side.times.append(time.perf_counter() - t)
    side.passes.add(counter.take())
    if side.outputs is not None:
        assert all(np.array_equal(a, b) for a, b in zip(side.outputs, outputs, strict=True)), "run-to-run drift"
    side.outputs = outputs


def warm_up(w: Workload, counter: PassCounter, rows: int) -> None:
    """Both code paths once on the first ``rows`` images, plus one pass pair at full batch shape.

    This loads lazy code and lets oneDNN pick its kernels before anything is timed.
    """
    b = w.batches[0]
    part = Batch(b.images[:rows], b.labels[:rows], b.rows[:rows])
    first = Workload(w.name, w.model, [part], w.ids[:rows], w.suite)
    run_robench(first)
    run_bare(first)
    with attack_mode(w.model):
        infer(w.model, grad_sign(w.model, b.images, b.labels))
    counter.take()


def compare(w: Workload, repeats: int, warm_rows: int) -> tuple[Side, Side]:
    """Alternate robench and bare runs (order flipped each round) so load hits both alike."""
    counter = PassCounter(w.model)
    try:
        warm_up(w, counter, warm_rows)
        rob, bare = Side(), Side()
        for r in range(repeats):
            order = [(rob, run_robench), (bare, run_bare)]
            for side, fn in order if r % 2 == 0 else order[::-1]:
                timed(side, fn, w, counter)
                print(f"  [{w.name}] round {r + 1}: {'robench' if fn is run_robench else 'bare'} "
                      f"{side.times[-1]:.2f} s", file=sys.stderr, flush=True)
    finally:
        counter.handle.remove()
    return rob, bare


def expected_passes(suite: Suite, batches: int) -> Passes:
    """The most both sides may spend (bim and iter_ll at their budget, whose trunk may save more): the bound."""
    eps = {a.name: a.eps for a in suite.attacks}
    trunk = sum(REGISTRY[k].budget(REGISTRY[k].config(), eps[k], 10) // 2 for k in ("bim", "iter_ll"))
    grads = 2 + trunk + 10 * len(eps["pgd"])
    infs = 1 + sum(len(v) for v in eps.values())
    return Passes(grads * batches, grads * batches, infs * batches)


def default_suite() -> Suite:
    """robench's default suite, checked to be the one the bare loop hard-codes."""
    suite = load_suite()
    names = tuple(a.name for a in suite.attacks)
    assert names == SUITE_NAMES, f"default suite changed: {names}"
    assert all(e > 0 for a in suite.attacks for e in a.eps), "bare loop assumes eps > 0"
    cfg = {a.name: a.config for a in suite.attacks}
    assert cfg["fgsm"].label == "true" and cfg["bim"].label == "true" and cfg["bim"].steps is None
    assert cfg["bim"].step_size == 1.0 and cfg["iter_ll"].step_size == 1.0 and cfg["iter_ll"].steps is None
    assert cfg["pgd"].steps == 10 and cfg["pgd"].step_size is None and cfg["pgd"].random_start
    assert cfg["pgd"].label == "true"
    return suite


def digits_workload(suite: Suite) -> Workload:
    """(a) the zoo's test_resnet (resnet-base) on the digits test split, batch 100."""
    from robench.models.zoo import get

    loaded = load_model(parse_spec(str(get("resnet-base").path)), 10)
    source = open_source("digits", "test")
    return Workload("a: resnet-base/digits", loaded.module, list(source.batches(loaded.input, 100)), source.ids, suite)


def resnet18_workload(suite: Suite, images: int, batch: int) -> Workload:
    """(b) random-init resnet18 at 224 px on synthetic images (same tensors for both sides)."""
    torch.manual_seed(SEED)
    loaded = load_model(parse_spec("resnet18"), 10)
    g = torch.Generator().manual_seed(SEED)
    source = TensorSource("synthetic", torch.rand(images, 3, 224, 224, generator=g),
                          torch.randint(0, 10, (images,), generator=g), [f"synthetic:{i}" for i in range(images)],
                          10, scale=1.0)
    return Workload("b: resnet18/224", loaded.module, list(source.batches(loaded.input, batch)), source.ids, suite)


def end_to_end() -> dict[str, float]:
    """(a) through run_eval, and its data and model loading on their own."""
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    source = open_source("digits", "test")
    t1 = time.perf_counter()
    load_models(parse_specs(("zoo:resnet-base",)), source, False, cpu)
    t2 = time.perf_counter()
    run_eval(EvalConfig(("zoo:resnet-base",), RunSpec(batch_size=100, device="cpu")))
    t3 = time.perf_counter()
    return {"data load": t1 - t0, "model load": t2 - t1, "run_eval total": t3 - t2}


# --- report --------------------------------------------------------------------------------


def summarize(w: Workload, rob: Side, bare: Side) -> tuple[str, float, bool]:
    """Print one workload's rows; returns (name, ratio of medians, all checks passed)."""
    want = expected_passes(w.suite, len(w.batches))
    same_passes = rob.passes == bare.passes and len(rob.passes) == 1 and all(
        a <= b for a, b in zip(dataclasses.astuple(next(iter(rob.passes))), dataclasses.astuple(want), strict=True))
    same_out = all(np.array_equal(a, b) for a, b in zip(rob.outputs, bare.outputs, strict=True))
    ratio = statistics.median(rob.times) / statistics.median(bare.times)
    n = f"{len(w.ids)} img / {len(w.batches)} batches"
    for label, side in (("robench", rob), ("bare", bare)):
        passes = ", ".join(str(p) for p in side.passes)
        print(f"{w.name:18} {label:8} {n:22} {len(side.times):4} {statistics.median(side.times):9.2f} "
              f"{min(side.times):8.2f}  {passes}")
    verdict = "OK" if ratio <= TARGET else f"ABOVE {TARGET:.2f}x"
    print(f"{'':18} ratio robench/bare (median) {ratio:.3f}x [{verdict}]; min/min "
          f"{min(rob.times) / min(bare.times):.3f}x; passes equal: {same_passes} (at most {want}); "
          f"outputs bit-identical: {same_out}")
    return w.name, ratio, same_passes and same_out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round for (a), 2 images for (b): a smoke run")
    p.add_argument("--images", type=int, default=None, help="synthetic images for (b) (default 8; quick 2)")
    p.add_argument("--batch", type=int, default=None, help="batch size for (b) (default 8; quick 2)")
    p.add_argument("--repeats-a", type=int, default=None, help="timed rounds per side for (a) (default 3)")
    p.add_argument("--repeats-b", type=int, default=1, help="timed rounds per side for (b) (default 1)")
    p.add_argument("--only", choices=("a", "b"), default=None, help="run one workload only")
    args = p.parse_args(argv)
    args.images = args.images or (2 if args.quick else 8)
    args.batch = args.batch or min(args.images, 2 if args.quick else 8)
    args.repeats_a = args.repeats_a or (1 if args.quick else 3)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seed {SEED}", file=sys.stderr)
    suite = default_suite()
    rows: list[tuple[Workload, Side, Side]] = []
    e2e: dict[str, float] = {}
    if args.only in (None, "a"):
        w = digits_workload(suite)
        rows.append((w, *compare(w, args.repeats_a, 100)))
        e2e = end_to_end()
    if args.only in (None, "b"):
        w = resnet18_workload(suite, args.images, args.batch)
        rows.append((w, *compare(w, args.repeats_b, 1)))
    print(f"\n{'workload':18} {'side':8} {'data':22} {'runs':>4} {'median s':>9} {'min s':>8}  passes (per run)")
    results = [summarize(*r) for r in rows]
    if e2e:
        print("(a) end to end: " + ", ".join(f"{k} {v:.2f} s" for k, v in e2e.items()))
    ok = all(good for _, _, good in results)
    print("\n" + "; ".join(f"{name}: {ratio:.3f}x" for name, ratio, _ in results) + f" (target <= {TARGET:.2f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
