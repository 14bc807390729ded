"""Benchmark: robench at scale on the CPU (issue 27): overhead, peak memory, and the transfer example store.

N synthetic images (random PNGs in a class folder, default 2,000 at 224 px), timm resnet18 with
random weights (10 classes, nothing downloaded), fgsm + bim at eps 4, health probes on:

  (a) robench's ``run_eval`` against a bare torch loop doing the same passes, CPU process time,
      the two sides alternating over rounds (medians). Both open the data and the model through
      ``open_run`` (the same folder, decoding, resizing and weights), so the ratio is what robench
      adds: the engine, the health probes (on the first 32 samples) and the results. Goal: <= 1.05x.
      Passes per sample and every accuracy are printed for both sides; they must agree.
  (b) peak RSS (``ru_maxrss``) of ``run_eval`` on the first 500 and on all N images, each in a fresh
      process: images stream from the folder, so it should stay flat (within 10%).
  (c) a transfer matrix over 3 sources (resnet18, resnet10t, resnet14t, random weights) with the
      example store: its file count and bytes, and the cached rerun's CPU time against the first run's.

    python bench/scale.py                                   # the full size: for a quiet machine, over an hour
    python bench/scale.py --images 64 --rss-from 32 --batch 16 --transfer-images 16 --rounds 1   # a few minutes
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from robench.attacks import attack_mode
from robench.attacks.suite import parse_suite
from robench.core.distributed import LOCAL
from robench.run.evaluate import EvalConfig, run_eval
from robench.run.runspec import RunSpec, open_run
from robench.run.transfer import TransferConfig, run_transfer

SUITE_TEXT = "eps: [4]\nattacks:\n  - name: fgsm\n  - name: bim\n"
MODEL = "resnet18"
SOURCES = ("resnet18", "resnet10t", "resnet14t")
BIM_STEPS = 5  # floor(min(eps + 4, 1.25 eps)) at eps 4: the paper's schedule


def make_folder(root: Path, n: int, size: int) -> Path:
    """``n`` random RGB PNGs of ``size`` px in 10 class folders (kept under ``root`` for reruns)."""
    folder = root / f"synthetic-{n}-{size}"
    if (folder / "done").is_file():
        return folder
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = folder / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(cls / f"img{i:05d}.png")
    (folder / "done").write_text("")
    return folder


def spec(folder: Path, args: argparse.Namespace, limit: int | None = None, health: bool = True) -> RunSpec:
    return RunSpec(data=str(folder), suite=parse_suite(SUITE_TEXT), limit=limit, batch_size=args.batch,
                   device="cpu", threads=args.threads, health_probes=health)


# --- the bare loop ---------------------------------------------------------------------------


def grad_sign(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One forward + backward: sign(d summed CE / d x)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g.sign()


def bare_batch(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """Clean, fgsm and bim at eps 4 on one batch: 6 forward + backward and 3 inference passes."""
    unit = 4 / 255
    with torch.inference_mode():
        clean = model(x).argmax(1)
    fgsm = (x + unit * grad_sign(model, x, y)).clamp(0, 1)
    x_adv = x
    for _ in range(BIM_STEPS):
        x_adv = torch.min(torch.max(x_adv + grad_sign(model, x_adv, y) / 255, x - unit), x + unit).clamp(0, 1)
    with torch.inference_mode():
        return [clean == y, model(fgsm).argmax(1) == y, model(x_adv).argmax(1) == y]


def bare_run(folder: Path, args: argparse.Namespace) -> tuple[list[float], float]:
    """Accuracies (clean, fgsm, bim) and forward + backward passes per sample of the bare loop."""
    opened = open_run(spec(folder, args), (MODEL,), LOCAL)
    model, config = opened.models[0].module, opened.models[0].input
    hits: list[list[Tensor]] = [[], [], []]
    with attack_mode(model):
        for b in opened.source.batches(config, args.batch):
            for kept, h in zip(hits, bare_batch(model, b.images, b.labels), strict=True):
                kept.append(h)
    return [float(torch.cat(h).float().mean()) for h in hits], 2.0 * (1 + BIM_STEPS)


def robench_run(folder: Path, args: argparse.Namespace, health: bool = True) -> tuple[list[float], float]:
    """Accuracies (clean, fgsm, bim) and crafting passes per sample of ``run_eval``."""
    result = run_eval(EvalConfig((MODEL,), spec(folder, args, health=health)))
    assert result is not None
    top1 = dict(zip(result.rows.attack, result.rows.top1, strict=True))
    n = int(result.rows.n.iloc[0])
    passes = sum(c["forward_passes"] + c["backward_passes"] for c in result.meta["cost"]) / n
    return [top1["clean"], top1["fgsm"], top1["bim"]], passes


def overhead(folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """(a): alternating rounds, median CPU seconds of each side."""
    sides = {"robench": robench_run, "bare": bare_run}
    if args.no_health_side:  # where the ratio goes: the probes' fixed cost, or the per-sample work
        sides["no health"] = partial(robench_run, health=False)
    times: dict[str, list[float]] = {k: [] for k in sides}
    seen: dict[str, tuple[list[float], float]] = {}
    for r in range(args.rounds):
        for name in list(sides) if r % 2 == 0 else list(reversed(sides)):
            start = time.process_time()
            seen[name] = sides[name](folder, args)
            times[name].append(time.process_time() - start)
            print(f"  round {r + 1}: {name} {times[name][-1]:.1f} CPU s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n(a) {args.images} images at {args.size} px, batch {args.batch}, {args.threads} thread(s), "
          f"{args.rounds} rounds (median CPU s)")
    print(f"{'side':<10}{'CPU s':>9}{'ratio':>8}{'passes/sample':>15}   top1 clean / fgsm / bim")
    for name in sides:
        acc, passes = seen[name]
        print(f"{name:<10}{med[name]:>9.2f}{med[name] / med['bare']:>8.3f}{passes:>15.2f}   "
              + " / ".join(f"{a:.4f}" for a in acc))
    same = all(acc == seen["bare"][0] for acc, _ in seen.values())
    print(f"accuracies {'identical' if same else 'DIFFERENT'}; goal robench / bare <= 1.05 (health probes on the "
          f"first 32 samples are in robench's time: at few images they weigh more than at 2,000)")
    return med


# --- peak memory -------------------------------------------------------------------------------


def child_rss(folder: str, limit: int, batch: int, threads: int) -> None:
    """In a fresh process: run_eval on the first ``limit`` images, then print the peak RSS in MB."""
    args = argparse.Namespace(batch=batch, threads=threads)
    run_eval(EvalConfig((MODEL,), spec(Path(folder), args, limit)))
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def rss(folder: Path, args: argparse.Namespace) -> None:
    """(b): peak RSS at ``--rss-from`` images and at all of them, each in a fresh process."""
    peaks = {}
    for n in (args.rss_from, args.images):
        out = subprocess.run([sys.executable, __file__, "--child-rss", str(folder), "--images", str(n), "--batch",
                              str(args.batch), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        peaks[n] = json.loads(out.strip().splitlines()[-1])["maxrss_mb"]
    small, big = peaks[args.rss_from], peaks[args.images]
    print(f"\n(b) peak RSS: {small:.0f} MB at {args.rss_from} images, {big:.0f} MB at {args.images}: "
          f"{big / small:.3f}x (goal: within 10%)")


# --- transfer and its store --------------------------------------------------------------------


def transfer(folder: Path, args: argparse.Namespace) -> None:
    """(c): a 3-source matrix with the store, then the same again (every example read back)."""
    with tempfile.TemporaryDirectory(prefix="robench-scale-store-") as root:
        cache = Path(root) / "store"
        cfg = TransferConfig(SOURCES, run=spec(folder, args, args.transfer_images), cache=cache)
        seconds = []
        for _ in range(2):
            start = time.process_time()
            result = run_transfer(cfg)
            seconds.append(time.process_time() - start)
            assert result is not None
        files = [p for p in cache.rglob("*.safetensors")]
        size = sum(p.stat().st_size for p in files)
        n = args.transfer_images
        print(f"\n(c) transfer matrix, 3 sources x 3 targets, fgsm + bim at eps 4, {n} images at {args.size} px")
        inputs = {m["label"]: "x".join(map(str, m["input_size"])) for m in result.meta["models"]}
        print(f"store: {len(files)} files, {size / 1e6:.2f} MB, {size / (3 * 2 * n) / 1e3:.1f} kB per (source, "
              f"attack, sample) on average: 1 eps of int8 per pixel of each source's input ({inputs})")
        print(f"first run {seconds[0]:.1f} CPU s, cached rerun {seconds[1]:.1f} CPU s: "
              f"{seconds[1] / seconds[0]:.3f}x (crafted on the rerun: {result.outcomes.crafted} attack calls)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224, help="image side in px (the model's input is 224)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rss-from", type=int, default=500, help="the smaller run of (b)")
    parser.add_argument("--transfer-images", type=int, default=None, help="images of (c); default --images")
    parser.add_argument("--no-health-side", action="store_true",
                        help="(a) also times robench without health probes, to show what the probes cost")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "robench-scale")
    parser.add_argument("--only", default="abc", help="which parts to run, e.g. ab")
    parser.add_argument("--child-rss", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args.child_rss, args.images, args.batch, args.threads)
        return 0
    torch.set_num_threads(args.threads)
    args.transfer_images = args.transfer_images or args.images
    if "b" in args.only and args.rss_from < max(args.batch, 32):
        parser.error(f"--rss-from {args.rss_from} is below --batch {args.batch} or the probes' 32 samples: peak "
                     f"memory grows with both, so (b) compares sizes of at least max(batch, 32) images")
    folder = make_folder(args.root, args.images, args.size)
    print(f"data: {folder} ({args.images} random PNGs, {args.size} px)")
    parts = {"a": overhead, "b": rss, "c": transfer}
    for key in args.only:
        parts[key](folder, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
