"""Benchmark: robench's `autoattack` suite (cascade) against torchattacks' AutoAttack(version="standard").

The same trained model, the same digits test images and the same threads; the two sides
alternate over rounds. torchattacks' AutoAttack is given the standard run's 100 steps for
APGD, APGD-T and FAB (Croce & Hein's; torchattacks' own default is 10, shown with --table).
Printed per model and eps: wall seconds of each side and their
ratio (goal: robench at most 0.8x), per-sample forward and backward passes of each side
(a forward hook on the model counts them), and both robust accuracies (robench's "worst"
row; torchattacks' accuracy on the examples AutoAttack returns). robench's worst case may
be lower, never meaningfully higher: the tests hold it to at most torchattacks + 1 point.

With ``--table`` it also runs robench's PGD-10 and APGD-CE alone, for the README's table:
time and passes of every row.

    python bench/autoattack.py                                   # zoo:resnet-base, eps 8
    python bench/autoattack.py --models zoo:effnet-base,zoo:effnet-stepll,zoo:resnet-base,zoo:resnet-stepll \\
        --eps 8,16 --limit 120 --table
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from robench.analysis import worst
from robench.attacks.suite import Suite, load_suite, parse_suite
from robench.data import InputConfig, open_source
from robench.engine import Hooks, Matrix, Participant, Plan, run_batches, settings_of
from robench.engine.passes import Passes, count_passes
from robench.models import load_model, parse_spec

PGD10 = "eps: [8]\nattacks:\n  - {name: pgd, id: pgd-10, steps: 10}\n"
APGD_CE = "eps: [8]\nattacks:\n  - {name: apgd, id: apgd-ce, loss: ce}\n"


def robench_robust(model: torch.nn.Module, batches: list, ids: list[str], suite: Suite) -> float:
    """robench's robust accuracy under this suite: the worst-case row (one eps)."""
    plan = Plan.white_box([Participant("m", model, InputConfig())])
    out = Matrix.empty(ids, settings_of(suite), plan.pairs())
    run_batches(plan, ({InputConfig(): b} for b in batches), suite, out, 0, Hooks())
    w = worst.with_worst(out.pairs[("m", "m")])
    return float(w.correct()[-1].mean())


def torchattacks_robust(model: torch.nn.Module, batches: list, eps: float, steps: int | None) -> float:
    """torchattacks' AutoAttack standard: accuracy on the examples it returns.

    torchattacks builds it with 10 steps for APGD, APGD-T and FAB (its attacks' defaults), where
    Croce & Hein's standard run, and robench's ``autoattack`` suite, take 100; ``steps`` sets them.
    """
    import torchattacks as ta

    right = []
    for b in batches:
        atk = ta.AutoAttack(model, norm="Linf", eps=eps / 255, version="standard", n_classes=10, seed=0)
        for a in atk._autoattack.attacks:
            if steps is not None and hasattr(a, "steps"):
                a.steps = steps
        x_adv = atk(b.images, b.labels)
        with torch.inference_mode():
            right.append((model(x_adv).argmax(1) == b.labels).numpy())
    return float(np.concatenate(right).mean())


def measure(fn: Callable[[], float], model: torch.nn.Module) -> tuple[float, Passes, float]:
    """Wall seconds, per-sample passes and the robust accuracy of one call."""
    with count_passes(model) as passes:
        start = time.perf_counter()
        acc = fn()
        return time.perf_counter() - start, passes, acc


def at_eps(text: str, eps: float) -> Suite:
    """A one-eps suite (a built-in name or YAML text) at this eps."""
    suite = load_suite(text) if "\n" not in text else parse_suite(text, "bench")
    return dataclasses.replace(suite, attacks=tuple(dataclasses.replace(a, eps=(eps,)) for a in suite.attacks))


def run_model(spec: str, eps: float, args: argparse.Namespace) -> list[dict]:
    """Every side on one model at one eps, alternating over rounds; one record per side."""
    loaded = load_model(parse_spec(spec), 10)
    model = loaded.module.eval()
    source = open_source("digits", "test", args.limit, 0)
    batches = list(source.batches(loaded.input, args.batch))
    with torch.inference_mode():
        clean = float(np.mean([(model(b.images).argmax(1) == b.labels).float().mean() for b in batches]))
    ids = source.ids
    sides = {"robench autoattack (worst)": lambda: robench_robust(model, batches, ids, at_eps("autoattack", eps)),
             "torchattacks AutoAttack": lambda: torchattacks_robust(model, batches, eps, 100)}
    if args.table:
        sides["torchattacks AA, its 10 steps"] = lambda: torchattacks_robust(model, batches, eps, None)
        sides = {"PGD-10": lambda: robench_robust(model, batches, source.ids, at_eps(PGD10, eps)),
                 "APGD-CE": lambda: robench_robust(model, batches, source.ids, at_eps(APGD_CE, eps)), **sides}
    seen: dict[str, list] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            seen[name].append(measure(sides[name], model))
    n = len(source.ids)
    return [{"model": spec, "eps": eps, "side": name, "clean": clean, "n": n,
             "seconds": statistics.median(s for s, _, _ in runs), "robust": runs[-1][2],
             "fwd": runs[-1][1].forward / n, "bwd": runs[-1][1].backward / n} for name, runs in seen.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="zoo:resnet-base")
    parser.add_argument("--eps", default="8")
    parser.add_argument("--limit", type=int, default=360)
    parser.add_argument("--batch", type=int, default=360)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="also PGD-10 and APGD-CE alone (the README table)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"digits test, {args.limit} images, batch {args.batch}, {args.threads} thread(s), {args.rounds} round(s); "
          "passes are per sample")
    print(f"{'model':<20}{'eps':>4} {'side':<30}{'clean':>7}{'robust':>8}{'seconds':>9}{'ratio':>7}"
          f"{'fwd':>9}{'bwd':>8}")
    for spec in args.models.split(","):
        for eps in (float(e) for e in args.eps.split(",")):
            recs = run_model(spec, eps, args)
            ref = next(r for r in recs if r["side"] == "torchattacks AutoAttack")
            for r in recs:
                print(f"{spec:<20}{eps:>4g} {r['side']:<30}{r['clean']:>7.3f}{r['robust']:>8.3f}{r['seconds']:>9.1f}"
                      f"{r['seconds'] / ref['seconds']:>7.2f}{r['fwd']:>9.1f}{r['bwd']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
