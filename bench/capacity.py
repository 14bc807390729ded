"""The paper's fourth finding: do larger models gain more from adversarial training? (Kurakin et al. 2017, sec. 4.4)

One timm family at growing capacity (by default test_resnet 0.37 M, resnet10t 4.9 M,
resnet18 11.2 M and resnet34 21.3 M parameters), each trained twice with robench's recipe:
plainly, and with step l.l. (the paper's recipe). On digits at the zoo's 20 epochs,
test_resnet's pair is the zoo's (resnet-base, resnet-stepll); the others train on one CPU
thread into ``/tmp/capacity/DATA-ARCH-ATTACK-eEPOCHS.safetensors`` (reused when present
unless ``--retrain``; a ``.json`` beside each keeps its training time). Every model is then
evaluated on the test split: clean, fgsm, step_ll and bim at eps 8 and 16, and the worst
case over ``--worst-suite`` (AutoAttack's APGD-CE and APGD-T by default) on
``--worst-limit`` images drawn the same way.

Printed, per attack and eps:
- each capacity's robust top-1 plain and step l.l.-trained, and its gain (step l.l. - plain)
  with a paired 95% interval over the same samples (robench.core.stats.paired);
- the gain's change from one capacity to the next, with a paired 95% interval: per sample
  d = (right after step l.l.) - (right plainly), in {-1, 0, 1}; the change is the mean of
  d_next - d over the same samples, with a normal interval from their standard deviation.

    python bench/capacity.py                  # digits; trains what is missing (about 20 min on one thread)
    python bench/capacity.py --epochs 5       # a quicker, rougher run
    python bench/capacity.py --data fashion-mnist --epochs 2 \\
        --archs test_efficientnet,test_resnet,resnet10t,resnet18 --limit 2000   # 60,000 training images
    python bench/capacity.py --data fashion-mnist --epochs 2 --archs resnet18 --train-only  # train one pair
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import NormalDist

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from robench.attacks.suite import load_suite, parse_suite  # noqa: E402
from robench.core import stats  # noqa: E402
from robench.models.recipe import TrainConfig  # noqa: E402
from robench.models.zoo import EPOCHS, ZOO  # noqa: E402
from robench.run.evaluate import EvalConfig, run_eval  # noqa: E402
from robench.run.runspec import RunSpec  # noqa: E402
from robench.train.loop import train  # noqa: E402

ARCHS = ("test_resnet", "resnet10t", "resnet18", "resnet34")
ATTACKS = ("none", "step_ll")
SUITE = parse_suite("eps: [8, 16]\nattacks:\n  - name: fgsm\n  - name: step_ll\n  - name: bim\n")
OUT = Path("/tmp/capacity")
SIZES = {"digits": 32, "fashion-mnist": 28}


def checkpoint(arch: str, attack: str, data: str, epochs: int, retrain: bool) -> Path:
    """The zoo's file for test_resnet on digits at the zoo's epochs; else trained here (or reused)."""
    if arch == "test_resnet" and data == "digits" and epochs == EPOCHS:
        return ZOO["resnet-base" if attack == "none" else "resnet-stepll"].path
    path = OUT / f"{data}-{arch}-{attack}-e{epochs}.safetensors"
    if path.with_suffix(".json").is_file() and not retrain:  # written when training ends: the file is whole
        return path
    OUT.mkdir(exist_ok=True)
    start = time.perf_counter()
    result = train(TrainConfig(arch=arch, train_attack=attack, epochs=epochs, data=data, image_size=SIZES[data]), path)
    seconds = time.perf_counter() - start
    path.with_suffix(".json").write_text(json.dumps({"train_s": round(seconds, 1), "meta": result.meta}))
    print(f"trained {path.name} in {seconds:.0f} s: test accuracy {100 * result.meta['val_accuracy']:.1f}%",
          file=sys.stderr, flush=True)
    return path


def change_interval(d_next: np.ndarray, d: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of d_next - d over the same samples, with a normal interval from their spread."""
    diff = d_next.astype(float) - d.astype(float)
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * diff.std(ddof=1) / np.sqrt(len(diff))
    return diff.mean(), diff.mean() - half, diff.mean() + half


def correct_by_setting(models: list[str], run: RunSpec, worst: bool) -> tuple[dict, list]:
    """Per model label, a [settings, N] bool array of right answers, and the settings (attack, eps)."""
    result = run_eval(EvalConfig(tuple(models), run, worst=worst))
    correct = {label: o.pred == o.labels for label, o in result.outcomes.items()}
    return correct, list(next(iter(result.outcomes.values())).settings)


def table(correct: dict, settings: list, archs: list[str], only: str | None = None) -> list[str]:
    """Markdown rows: plain, step l.l., gain and the gain's change per arch, for each setting (or ``only``)."""
    lines = []
    for s, (attack, eps) in enumerate(settings):
        if only is not None and attack != only:
            continue
        previous = None
        for arch in archs:
            base, adv = correct[f"{arch}-none"][s], correct[f"{arch}-step_ll"][s]
            gain = stats.paired(base, adv)
            d = adv.astype(int) - base.astype(int)
            change = ""
            if previous is not None:
                mean, low, high = change_interval(d, previous)
                change = f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
            lines.append(f"| {attack} | {eps:g} | {arch} | {100 * base.mean():.1f} | {100 * adv.mean():.1f} | "
                         f"{100 * gain.diff:+.1f} [{100 * gain.low:+.1f}, {100 * gain.high:+.1f}] | {change} |")
            previous = d
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=tuple(SIZES), default="digits", help="training and test data")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs (default {EPOCHS})")
    parser.add_argument("--archs", default=",".join(ARCHS), help=f"timm archs, comma-separated (default "
                                                                  f"{','.join(ARCHS)})")
    parser.add_argument("--limit", type=int, help="test images for the paper's attacks (default: all)")
    parser.add_argument("--worst-limit", type=int, default=200, help="test images for the worst case (0: none)")
    parser.add_argument("--worst-suite", default="autoattack-fast", help="suite whose worst case is reported")
    parser.add_argument("--retrain", action="store_true", help="train even when a checkpoint exists")
    parser.add_argument("--train-only", action="store_true", help="train what is missing, evaluate nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    archs = args.archs.split(",")
    paths = {f"{arch}-{attack}": checkpoint(arch, attack, args.data, args.epochs, args.retrain)
             for arch in archs for attack in ATTACKS}
    if args.train_only:
        return
    models = [f"{label}={path}" for label, path in paths.items()]
    print(f"| arch | parameters | test top-1 plain / step l.l. | train s plain / step l.l. ({args.epochs} epochs) |")
    print("|---|---:|---|---|")
    for arch in archs:
        sides = [paths[f"{arch}-{attack}"] for attack in ATTACKS]
        side = [json.loads(p.with_suffix(".json").read_text()) if p.with_suffix(".json").is_file() else None
                for p in sides]
        params = sum(t.numel() for t in timm.create_model(arch, num_classes=10).parameters())
        accuracy = " / ".join(f"{100 * s['meta']['val_accuracy']:.1f}" if s else "zoo" for s in side)
        seconds = " / ".join(f"{s['train_s']:.0f}" if s else "zoo" for s in side)
        print(f"| {arch} | {params / 1e6:.2f} M | {accuracy} | {seconds} |")
    correct, settings = correct_by_setting(models, RunSpec(data=args.data, suite=SUITE, limit=args.limit), False)
    n = len(next(iter(correct.values()))[0])
    print(f"\nrobust top-1 % on {n} {args.data} test images (paired 95% intervals)")
    print("| attack | eps | arch | plain | step l.l. | gain (step l.l. - plain) | change of the gain from the "
          "previous arch |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table(correct, settings, archs)), flush=True)
    if args.worst_limit:
        suite = load_suite(args.worst_suite)
        correct, settings = correct_by_setting(models, RunSpec(data=args.data, suite=suite, limit=args.worst_limit),
                                               True)
        print(f"\nworst case over {args.worst_suite} on {args.worst_limit} test images drawn the same way")
        print("\n".join(table(correct, settings, archs, only="worst")))


if __name__ == "__main__":
    main()
