"""Benchmark: robench on one GPU (issue 27): clean and attack images/s, channels-last and bf16, and what bf16 changes.

timm resnet50 (random weights, 1000 classes, nothing downloaded) at 224 px on synthetic images
held in memory (pinned), labels the model's own float32 clean predictions, so every sample is
clean-correct and every attack runs on all of them (cascade and early stopping included):

  (a) clean images/s: robench's engine (``engine.evaluate``, its scoring and recording) against
      a plain loop in the style of timm's validate.py (``model(x)`` under no_grad, top-1/top-5 on
      the device, one sync per batch) on the same wrapped model and the same batches, rounds
      alternating, medians. Goal: robench >= 0.95x.
  (b) images/s of fgsm and pgd-10 (the ``quick`` suite's) and ``autoattack-fast`` (APGD-CE and
      APGD-T, cascade, early stopping) at eps 4, each in float32 and bf16 autocast, with
      and without channels-last;
  (c) how many outcomes (samples x settings, top-1 right or wrong) bf16 changed against float32.

Wall seconds around each run with the device synchronized. Sized to fit in 8 minutes on one
H100 with the defaults. On the CPU, a smoke run checks that the script works:

    python bench/gpu.py                                     # one GPU
    python bench/gpu.py --device cpu --model resnet18 --size 32 --images 4 --aa-images 2 --batch 2 \
        --rounds 1 --threads 1
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
from torch import nn

from robench import engine
from robench.attacks.suite import Suite, load_suite
from robench.data import Batch
from robench.models import load_model, parse_spec
from robench.models.accel import accelerate

EPS = 4.0  # ImageNet's convention (RobustBench), as the autoattack suites' notes say


def suites() -> dict[str, Suite]:
    """fgsm and pgd-10 from ``quick``, and ``autoattack-fast``, all at eps 4."""
    quick, fast = load_suite("quick"), load_suite("autoattack-fast")
    at = {a.id: dataclasses.replace(a, eps=(EPS,)) for a in quick.attacks}
    return {"fgsm": dataclasses.replace(quick, attacks=(at["fgsm"],)),
            "pgd-10": dataclasses.replace(quick, attacks=(at["pgd-10"],)),
            "autoattack-fast": dataclasses.replace(
                fast, attacks=tuple(dataclasses.replace(a, eps=(EPS,)) for a in fast.attacks))}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall seconds of ``work`` with the device finished, and its result."""
    synchronize(device)
    start = time.perf_counter()
    out = work()
    synchronize(device)
    return time.perf_counter() - start, out


def make_batches(model: nn.Module, n: int, size: int, batch: int, device: torch.device) -> list[Batch]:
    """``n`` random [0, 1] images in pinned CPU batches, labelled with the model's float32 clean top-1."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    labels = torch.empty(n, dtype=torch.long)
    with torch.inference_mode():
        for s in range(0, n, batch):
            labels[s:s + batch] = model(images[s:s + batch].to(device)).argmax(1).cpu()
    pin = device.type == "cuda"
    return [Batch(images[s:s + batch].pin_memory() if pin else images[s:s + batch], labels[s:s + batch],
                  torch.arange(s, min(s + batch, n))) for s in range(0, n, batch)]


def validate_loop(model: nn.Module, batches: list[Batch], device: torch.device) -> float:
    """timm validate.py's inner loop: copy, forward, top-1/top-5 on the device, a sync per batch."""
    right = 0.0
    with torch.no_grad():
        for b in batches:
            x, y = b.images.to(device, non_blocking=True), b.labels.to(device, non_blocking=True)
            top5 = model(x).topk(5, 1).indices
            right += float((top5[:, 0] == y).float().sum().item())
            (top5 == y[:, None]).any(1).float().sum()
    return right


def clean_suite() -> Suite:
    """A suite of no attack: robench's clean scoring alone."""
    return dataclasses.replace(load_suite("quick"), attacks=())


def clean_rates(fast: nn.Module, batches: list[Batch], ids: list[str], device: torch.device,
                rounds: int) -> tuple[float, float]:
    """(a): images/s of robench and of the validate loop, medians over alternating rounds."""
    n, sides = len(ids), {"robench": [], "validate": []}  # type: dict[str, list[float]]
    run = {"robench": lambda: engine.evaluate(fast, batches, ids, clean_suite()),
           "validate": lambda: validate_loop(fast, batches, device)}
    for side in run.values():  # warm-up: cuDNN picks its kernels, lazy set-up
        side()
    for r in range(rounds):
        for name in list(run) if r % 2 == 0 else list(reversed(run)):
            sides[name].append(n / timed(run[name], device)[0])
    return statistics.median(sides["robench"]), statistics.median(sides["validate"])


def attack_rate(fast: nn.Module, batches: list[Batch], ids: list[str], suite: Suite,
                device: torch.device) -> tuple[float, np.ndarray]:
    """(b): images/s of one suite over the batches (after one warm-up batch) and its per-sample correctness."""
    engine.evaluate(fast, batches[:1], ids, suite)  # its rows are filled again by the timed run
    seconds, out = timed(lambda: engine.evaluate(fast, batches, ids, suite), device)
    assert isinstance(out, engine.Outcomes)
    return len(ids) / seconds, out.correct()


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    torch.manual_seed(0)
    loaded = load_model(parse_spec(args.model), 1000)
    model = loaded.module.to(device).eval()
    batches = make_batches(model, args.images, args.size, args.batch, device)
    ids = [f"synthetic:{i}" for i in range(args.images)]
    aa = [b for b in batches if int(b.rows[0]) < args.aa_images]
    aa = [Batch(b.images[: args.aa_images - int(b.rows[0])], b.labels[: args.aa_images - int(b.rows[0])],
                b.rows[: args.aa_images - int(b.rows[0])]) for b in aa]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} at {args.size} px, {args.images} synthetic images ({args.aa_images} for autoattack-fast), "
          f"batch {args.batch}, on {name}, torch {torch.__version__}")
    print(f"\n{'amp':<6}{'ch-last':<9}{'clean robench':>15}{'validate':>10}{'ratio':>7}"
          + "".join(f"{k:>17}" for k in suites()) + "   (images/s)")
    ok, correct = True, {}
    for channels_last in (False, True):
        for amp in (None, "bf16"):
            fast = accelerate(model, amp, channels_last)
            ours, theirs = clean_rates(fast, batches, ids, device, args.rounds)
            ok &= ours >= 0.95 * theirs
            rates = []
            for key, suite in suites().items():
                use, which = (aa, ids[:args.aa_images]) if key == "autoattack-fast" else (batches, ids)
                rate, correct[(key, channels_last, amp)] = attack_rate(fast, use, which, suite, device)
                rates.append(rate)
            print(f"{amp or 'fp32':<6}{'on' if channels_last else 'off':<9}{ours:>15.1f}{theirs:>10.1f}"
                  f"{ours / theirs:>7.3f}" + "".join(f"{r:>17.1f}" for r in rates), flush=True)
            if channels_last:
                model.to(memory_format=torch.contiguous_format)
    print("\noutcomes bf16 changed against float32 (samples x settings whose top-1 right/wrong differs):")
    for key in suites():
        for channels_last in (False, True):
            a, b = correct[(key, channels_last, None)], correct[(key, channels_last, "bf16")]
            print(f"  {key:<16} channels-last {'on ' if channels_last else 'off'}: {int((a != b).sum())} of {a.size}")
    print(f"\nclean goal robench >= 0.95x validate: {'met in every setting' if ok else 'NOT met in some setting'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=1024, help="images for clean, fgsm and pgd-10")
    parser.add_argument("--aa-images", type=int, default=64, help="the first images, for autoattack-fast")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:  # a busy shared CPU: one thread per process avoids threads waiting on each other
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; for a smoke run on the CPU give --device cpu (see --help)",
              file=sys.stderr)
        return 2
    args.aa_images = min(args.aa_images, args.images)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
