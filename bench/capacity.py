"""The paper's fourth finding: do larger models gain more from adversarial training? (Kurakin et al. 2017, sec. 4.4)

One timm family at growing capacity (test_resnet 0.37 M, resnet10t 4.9 M, resnet18 11.2 M,
resnet34 21.3 M parameters), each trained twice with the zoo's recipe on digits at 32 px
(20 epochs): plainly, and with step l.l. (the paper's recipe). test_resnet's pair is the
zoo's (resnet-base, resnet-stepll); the others train on one CPU thread into
``/tmp/capacity/NAME.safetensors`` (reused when present unless ``--retrain``). Every model is
then evaluated on the 360 digits test images: clean, fgsm, step_ll and bim at eps 8 and 16.

Printed, per attack and eps:
- each capacity's robust top-1 plain and step l.l.-trained, and its gain (step l.l. - plain)
  with a paired 95% interval over the same samples (robench.core.stats.paired);
- the gain's change from one capacity to the next, with a paired 95% interval: per sample
  d = (right after step l.l.) - (right plainly), in {-1, 0, 1}; the change is the mean of
  d_next - d over the same samples, with a normal interval from their standard deviation.

    python bench/capacity.py                  # trains what is missing (about 20 min on one thread)
    python bench/capacity.py --epochs 5       # a quicker, rougher run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from statistics import NormalDist

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from robench.attacks.suite import parse_suite  # noqa: E402
from robench.core import stats  # noqa: E402
from robench.models.recipe import TrainConfig  # noqa: E402
from robench.models.zoo import EPOCHS, ZOO  # noqa: E402
from robench.run.evaluate import EvalConfig, run_eval  # noqa: E402
from robench.run.runspec import RunSpec  # noqa: E402
from robench.train.loop import train  # noqa: E402

ARCHS = ("test_resnet", "resnet10t", "resnet18", "resnet34")
SUITE = parse_suite("eps: [8, 16]\nattacks:\n  - name: fgsm\n  - name: step_ll\n  - name: bim\n")
OUT = Path("/tmp/capacity")


def checkpoint(arch: str, attack: str, epochs: int, retrain: bool) -> Path:
    """The zoo's file for test_resnet at the zoo's epochs; else trained here (or reused)."""
    if arch == "test_resnet" and epochs == EPOCHS:
        return ZOO["resnet-base" if attack == "none" else "resnet-stepll"].path
    path = OUT / f"{arch}-{attack}-e{epochs}.safetensors"
    if path.is_file() and not retrain:
        return path
    start = time.perf_counter()
    result = train(TrainConfig(arch=arch, train_attack=attack, epochs=epochs), path)
    print(f"trained {path.name} in {time.perf_counter() - start:.0f} s: test accuracy "
          f"{100 * result.meta['val_accuracy']:.1f}%", file=sys.stderr, flush=True)
    return path


def change_interval(d_next: np.ndarray, d: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of d_next - d over the same samples, with a normal interval from their spread."""
    diff = d_next.astype(float) - d.astype(float)
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * diff.std(ddof=1) / np.sqrt(len(diff))
    return diff.mean(), diff.mean() - half, diff.mean() + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    archs = args.archs.split(",")
    models = [f"{arch}-{attack}={checkpoint(arch, attack, args.epochs, args.retrain)}"
              for arch in archs for attack in ("none", "step_ll")]
    result = run_eval(EvalConfig(tuple(models), RunSpec(suite=SUITE), worst=False))
    correct = {label: o.pred == o.labels for label, o in result.outcomes.items()}  # [settings, N]
    settings = next(iter(result.outcomes.values())).settings
    print(f"robust top-1 % on {len(result.outcomes[models[0].split('=')[0]].ids)} digits test images "
          f"(paired 95% intervals)")
    print("| attack | eps | arch | plain | step l.l. | gain (step l.l. - plain) | change of the gain from the "
          "previous arch |")
    print("|---|---|---|---|---|---|---|")
    for s, (attack, eps) in enumerate(settings):
        previous = None
        for arch in archs:
            base, adv = correct[f"{arch}-none"][s], correct[f"{arch}-step_ll"][s]
            gain = stats.paired(base, adv)
            d = adv.astype(int) - base.astype(int)
            change = ""
            if previous is not None:
                mean, low, high = change_interval(d, previous)
                change = f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
            print(f"| {attack} | {eps:g} | {arch} | {100 * base.mean():.1f} | {100 * adv.mean():.1f} | "
                  f"{100 * gain.diff:+.1f} [{100 * gain.low:+.1f}, {100 * gain.high:+.1f}] | {change} |")
            previous = d


if __name__ == "__main__":
    main()
