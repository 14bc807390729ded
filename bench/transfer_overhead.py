"""Benchmark: a 3x3 transfer matrix with robench vs the naive way (regenerate examples per pair), and an
ensemble source vs a bare-torch loop that averages its members' logits by hand.

Run: python bench/transfer_overhead.py [--images N] [--only matrix|ensemble]. Not a test.
matrix: both wall times, the attack calls each side makes, and the ratio robench / naive
(target <= 0.45x for 3 targets). ensemble: robench's BIM on ``Ensemble`` of the three models
against the same BIM on ``HandSum`` (the mean logits in bare torch) and against the steps written
in bare torch (``hand_bim``), interleaved; passes counted on every member on each side (ratios
must be 1), CPU and wall time ratios, and whether the examples are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.attacks import REGISTRY, Labels, attack_mode
from robench.attacks.suite import load_suite, parse_suite
from robench.data import open_source
from robench.engine import attack_noise, score
from robench.engine.passes import Passes, count_passes
from robench.models.ensemble import Ensemble
from robench.run.runspec import RunSpec, load_models, parse_specs
from robench.run.transfer import TransferConfig, deliver, run_transfer

MODELS = ("zoo:effnet-base", "zoo:effnet-stepll", "zoo:resnet-base")


def naive(images: int, batch: int) -> tuple[float, int, dict]:
    """For every (source, target) pair, craft the source's examples again and score them on the target."""
    suite = load_suite()
    source = open_source("digits", "test", images, 0)
    models = load_models(parse_specs(MODELS), source, False, torch.device("cpu"))
    calls, preds = 0, {}
    start = time.perf_counter()
    for s in models:
        for t in models:
            with attack_mode(s.module), attack_mode(t.module):
                for bs, bt in zip(source.batches(s.input, batch), source.batches(t.input, batch), strict=True):
                    labels = Labels.from_logits(score(s.module, bs.images), bs.labels)
                    score(t.module, bt.images)  # the target's clean forward, as a per-pair script does
                    for spec in suite.attacks:
                        calls += 1
                        rng = attack_noise(0, spec.id, [source.ids[r] for r in bs.rows.tolist()])
                        for e, x_adv in REGISTRY[spec.name].run(s.module, bs.images, labels, spec.eps, spec.config,
                                                                 rng):
                            xt = x_adv if t.input == s.input else deliver(bt.images, x_adv - bs.images, e)
                            preds.setdefault((s.spec.label, t.spec.label, spec.id, e), []).append(
                                score(t.module, xt).argmax(1).numpy())
    return time.perf_counter() - start, calls, preds


def robench(images: int, batch: int) -> tuple[float, int, object]:
    start = time.perf_counter()
    result = run_transfer(TransferConfig(MODELS, run=RunSpec(limit=images, batch_size=batch, device="cpu")))
    return time.perf_counter() - start, result.outcomes.crafted, result


ENSEMBLE_EPS, ENSEMBLE_STEPS = 8.0, 10  # BIM at eps 8/255, step 1/255, 10 steps


def hand_bim(members: list[nn.Module], x: Tensor, y: Tensor) -> Tensor:
    """BIM on the members' mean logits, written out: each step one forward and one backward per member."""
    eps, step = ENSEMBLE_EPS / 255, 1 / 255
    x_adv = x.clone()
    for _ in range(ENSEMBLE_STEPS):
        xg = x_adv.detach().requires_grad_(True)
        logits = sum(m(xg) for m in members) / len(members)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)
        x_adv = torch.min(torch.max(x_adv + step * grad.sign(), x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv


class HandSum(nn.Module):
    """The members' mean logits in one line of bare torch: what ``Ensemble`` must not cost more than."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return sum(m(x) for m in self.members) / len(self.members)


def ensemble(images: int, batch: int, repeats: int) -> bool:
    """robench's BIM on ``Ensemble``, on ``HandSum`` and ``hand_bim``, alternating; prints passes, times, ratios."""
    source = open_source("digits", "test", images, 0)
    models = load_models(parse_specs(MODELS), source, False, torch.device("cpu"))
    assert len({(m.input.channels, m.input.size) for m in models}) == 1, "the hand loop feeds each member the same x"
    members = [m.module for m in models]
    joint = Ensemble(members, [m.input for m in models])
    spec = parse_suite(f"eps: [{ENSEMBLE_EPS}]\nattacks:\n  - name: bim\n    steps: {ENSEMBLE_STEPS}\n").attacks[0]
    batches = list(source.batches(models[0].input, batch))

    def attacked(model: nn.Module) -> tuple[list[Tensor], Passes]:
        out, passes = [], Passes()
        for b in batches:
            with _counted(members) as p:
                labels = Labels.from_logits(score(model, b.images), b.labels)
                ((_, x_adv),) = REGISTRY["bim"].run(model, b.images, labels, spec.eps, spec.config,
                                                    attack_noise(0, spec.id, [source.ids[r] for r in b.rows.tolist()]))
            out.append(x_adv)
            passes.add(p)
        return out, passes

    def bare() -> tuple[list[Tensor], Passes]:
        out, passes = [], Passes()
        for b in batches:
            with attack_mode(joint), _counted(members) as p:
                score(joint, b.images)  # the clean forward robench takes its labels from
                out.append(hand_bim(members, b.images, b.labels))
            passes.add(p)
        return out, passes

    sides = {"robench": lambda: attacked(joint), "robench-handsum": lambda: attacked(HandSum(members)), "bare": bare}
    return _alternate(sides, repeats, images, batch)


class _counted:
    """Passes of several members, counted together (``count_passes`` on each)."""

    def __init__(self, members: list[nn.Module]) -> None:
        self.contexts = [count_passes(m) for m in members]

    def __enter__(self) -> Passes:
        self.counts = [c.__enter__() for c in self.contexts]
        self.total = Passes()
        return self.total

    def __exit__(self, *exc: object) -> None:
        for c, n in zip(self.contexts, self.counts, strict=True):
            c.__exit__(*exc)
            self.total.add(n)


def _alternate(sides: dict, repeats: int, images: int, batch: int) -> bool:
    """Warm each side once, then alternate their order each round; print the medians and ratios."""
    results = {name: run() for name, run in sides.items()}  # warm-up, and the outputs compared
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    wall: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            c, w = time.process_time(), time.perf_counter()
            sides[name]()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
            print(f"  round {r + 1}: {name} cpu {cpu[name][-1]:.2f} s, wall {wall[name][-1]:.2f} s", flush=True)
    x_ours, p_ours = results["robench"]
    same = all(torch.equal(a, b) for name in sides for a, b in zip(x_ours, results[name][0], strict=True))
    print(f"\nensemble of {len(MODELS)} ({', '.join(MODELS)}), BIM eps {ENSEMBLE_EPS:g} x {ENSEMBLE_STEPS} steps, "
          f"{images} digits images, batch {batch}, {repeats} rounds; robench: BIM on Ensemble, robench-handsum: "
          f"BIM on HandSum, bare: hand_bim")
    for name in sides:
        p = results[name][1]
        print(f"{name:>16}: passes (summed over samples and members) {p.forward} fwd + {p.backward} bwd, "
              f"cpu {statistics.median(cpu[name]):.2f} s, wall {statistics.median(wall[name]):.2f} s")
    for name in list(sides)[1:]:
        c_ratio = statistics.median(cpu["robench"]) / statistics.median(cpu[name])
        w_ratio = statistics.median(wall["robench"]) / statistics.median(wall[name])
        print(f"robench / {name}: passes {p_ours.total / results[name][1].total:.3f}, cpu {c_ratio:.3f}x, "
              f"wall {w_ratio:.3f}x")
    print(f"examples identical: {same}")
    return same and all(results[name][1].total == p_ours.total for name in sides)


def matrix(args: argparse.Namespace) -> None:
    """The 3x3 matrix against the naive per-pair loop."""
    robench(10, 10)  # warm up (imports, allocator)
    times: dict[str, list[float]] = {"robench": [], "naive": []}
    for r in range(args.repeats):
        order = ("robench", "naive") if r % 2 == 0 else ("naive", "robench")
        for side in order:
            if side == "robench":
                t, crafted, result = robench(args.images, args.batch)
            else:
                t, calls, preds = naive(args.images, args.batch)
            times[side].append(t)
            print(f"  round {r + 1}: {side} {t:.2f} s", flush=True)
    out = result.outcomes
    same = all(np.array_equal(np.concatenate(v), out.pairs[(s, t)].pred[out.settings.index((a, e))])
               for (s, t, a, e), v in preds.items())
    ours, theirs = statistics.median(times["robench"]), statistics.median(times["naive"])
    print(f"\n3x3 matrix, default suite, {args.images} digits images, batch {args.batch}")
    print(f"robench: {ours:.2f} s, {crafted} attack calls (3 sources x 5 attacks x batches)")
    print(f"naive:   {theirs:.2f} s, {calls} attack calls (9 pairs x 5 attacks x batches)")
    print(f"predictions identical: {same}")
    print(f"ratio robench / naive: {ours / theirs:.3f}x (target <= 0.45x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("matrix", "ensemble"), help="one of the two benchmarks (default: both)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.only != "ensemble":
        matrix(args)
    if args.only != "matrix" and not ensemble(args.images, args.batch, args.repeats):
        raise SystemExit("ensemble: the examples or the passes differ from the bare loop")


if __name__ == "__main__":
    main()
