"""Benchmark: a 3x3 transfer matrix with robench vs the naive way (regenerate examples per pair).

Run: python bench/transfer_overhead.py [--images N]. Not a test. Prints both wall times,
the attack calls each side makes, and the ratio robench / naive (target <= 0.45x for 3 targets).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from robench.attacks import REGISTRY, Labels, attack_mode
from robench.attacks.suite import load_suite
from robench.data import open_source
from robench.engine import attack_noise, score
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
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


if __name__ == "__main__":
    main()
