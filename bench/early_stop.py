"""Benchmark: the paper suite in robench (full, and with early stopping) against a torchattacks loop.

The same trained model (the zoo's resnet-base by default), the same digits test images and
the same threads. The torchattacks side runs, for every eps, FGSM, step l.l. (FGSM on the
least-likely class), BIM and iter l.l. (BIM with the paper's schedule, steps=0) and PGD
(10 steps of 2.5 eps / 10, random start): 122 gradient passes per batch. robench runs the
same suite (one gradient for all eps of a single-step attack, bim's first gradient shared):
110; with ``early_stop: true`` a sample stops at its first misclassified iterate and is not
attacked at a larger eps once fooled, so the passes fall with the accuracy.

Printed: CPU seconds (process time; medians over rounds, the two sides alternating), the
ratio robench / torchattacks, per-sample forward and backward passes of each side, and the
accuracies. Full robench equals torchattacks bit for bit on fgsm, step_ll, bim and iter_ll
(checked here, exit 1 otherwise); pgd's random starts differ, so its accuracy is compared.
Early stopping's worst case is never above the full run's (checked).

    python bench/early_stop.py                  # about 3 minutes on 2 CPU cores
    python bench/early_stop.py --models zoo:effnet-base,zoo:effnet-stepll --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import statistics
import sys
import time

import numpy as np
import torch

from robench import engine
from robench.analysis import worst
from robench.attacks.suite import load_suite
from robench.data import open_source
from robench.engine.passes import Passes, count_passes
from robench.models import load_model, parse_spec

SUITE_EPS = (2.0, 4.0, 8.0, 16.0)


def torchattacks_loop(model: torch.nn.Module, batches: list,
                      eps: tuple[float, ...]) -> dict[tuple[str, float], np.ndarray]:
    """Per-sample correctness of every (attack, eps), torchattacks doing the crafting."""
    import torchattacks as ta

    def least_likely(atk: ta.Attack) -> ta.Attack:
        with contextlib.redirect_stdout(io.StringIO()):  # 3.5 has quiet=True; earlier releases always print
            atk.set_mode_targeted_least_likely()
        return atk

    makers = {
        "fgsm": lambda u: ta.FGSM(model, eps=u),
        "step_ll": lambda u: least_likely(ta.FGSM(model, eps=u)),
        "bim": lambda u: ta.BIM(model, eps=u, alpha=1 / 255, steps=0),
        "iter_ll": lambda u: least_likely(ta.BIM(model, eps=u, alpha=1 / 255, steps=0)),
        "pgd": lambda u: ta.PGD(model, eps=u, alpha=2.5 * u / 10, steps=10, random_start=True),
    }
    out: dict[tuple[str, float], list[np.ndarray]] = {}
    for b in batches:
        for name, make in makers.items():
            for e in eps:
                x_adv = make(e / 255)(b.images, b.labels)
                with torch.inference_mode():
                    out.setdefault((name, e), []).append((model(x_adv).argmax(1) == b.labels).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def robench_run(model: torch.nn.Module, batches: list, ids: list[str], early_stop: bool) -> engine.Outcomes:
    """robench's engine on the paper suite, optionally with early stopping."""
    suite = dataclasses.replace(load_suite("paper"), early_stop=early_stop)
    return engine.evaluate(model, iter(batches), ids, suite, seed=0)


def timed(fn, model) -> tuple[float, Passes, object]:
    """CPU seconds, per-sample passes and the result of one call."""
    with count_passes(model) as passes:
        start = time.process_time()
        result = fn()
        seconds = time.process_time() - start
    return seconds, passes, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="zoo:resnet-base", help="comma-separated model specs")
    parser.add_argument("--limit", type=int, default=360)
    parser.add_argument("--batch", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ok, totals = True, {}
    for spec in args.models.split(","):
        model_ok, medians = run_model(spec, args)
        ok &= model_ok
        for name, t in medians.items():
            totals[name] = totals.get(name, 0.0) + t
    if len(args.models.split(",")) > 1:
        base = totals["torchattacks"]
        print("all models: " + ", ".join(f"{k} {v:.2f} s ({v / base:.3f}x)" for k, v in totals.items()))
    return 0 if ok else 1


def run_model(spec: str, args: argparse.Namespace) -> tuple[bool, dict[str, float]]:
    """Every side on one model, alternating over rounds; the report and the median CPU seconds."""
    loaded = load_model(parse_spec(spec), 10)
    model = loaded.module.eval()
    source = open_source("digits", "test", args.limit, 0)
    batches = list(source.batches(loaded.input, args.batch))
    sides = {
        "torchattacks": lambda: torchattacks_loop(model, batches, SUITE_EPS),
        "robench": lambda: robench_run(model, batches, source.ids, False),
        "robench early_stop": lambda: robench_run(model, batches, source.ids, True),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    passes, results = {}, {}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            seconds, passes[name], results[name] = timed(sides[name], model)
            times[name].append(seconds)
    ok = report(spec, args, times, passes, results, len(source.ids))
    return ok, {k: statistics.median(v) for k, v in times.items()}


def report(spec: str, args: argparse.Namespace, times: dict, passes: dict, results: dict, n: int) -> bool:
    ref = results["torchattacks"]
    full, stop = results["robench"], results["robench early_stop"]
    base = statistics.median(times["torchattacks"])
    print(f"\nmodel {spec}, {n} digits test images, batch {args.batch}, {args.threads} thread(s), "
          f"{args.rounds} rounds (median CPU seconds)")
    print(f"{'side':<20}{'CPU s':>9}{'ratio':>8}{'fwd/sample':>12}{'bwd/sample':>12}")
    for name, ts in times.items():
        p = passes[name]
        print(f"{name:<20}{statistics.median(ts):>9.2f}{statistics.median(ts) / base:>8.3f}"
              f"{p.forward / n:>12.1f}{p.backward / n:>12.1f}")
    ok = True
    print(f"\n{'attack':<10}{'eps':>5}{'torchattacks':>14}{'robench':>10}{'early_stop':>12}")
    for (a, e), c in ref.items():
        i = full.settings.index((a, e))
        ours, early = full.correct()[i], stop.correct()[i]
        same = np.array_equal(ours, c) if a != "pgd" else True
        ok &= same
        print(f"{a:<10}{e:>5g}{c.mean():>14.3f}{ours.mean():>10.3f}{early.mean():>12.3f}"
              + ("" if same else "   MISMATCH"))
    w_full, w_stop = worst.with_worst(full), worst.with_worst(stop)
    rows = [s for s, (a, _) in enumerate(w_full.settings) if a == "worst"]
    print("\nworst case per eps (full / early_stop):",
          ", ".join(f"{w_full.settings[s][1]:g}: {w_full.correct()[s].mean():.3f} / {w_stop.correct()[s].mean():.3f}"
                    for s in rows))
    stronger = all((~w_stop.correct()[s] | w_full.correct()[s]).all() for s in rows)
    ok &= stronger
    print("checks:", "bit-identical fgsm/step_ll/bim/iter_ll" if ok else "FAILED",
          "; early stopping at least as strong" if stronger else "; early stopping weaker: FAILED")
    return ok


if __name__ == "__main__":
    sys.exit(main())
