"""Benchmark: seconds per pass of one model on this device: an inference forward, and a forward + backward to the input.

The per-pass times that docs/scale.md multiplies by passes per sample. Random weights (timm,
nothing downloaded), random [0, 1] images at the model's input size, through robench's wrapper
(normalization inside), as robench's attacks call the model. CPU: process time (one thread by
default); CUDA: wall time with the device synchronized. Medians over repeats after a warm-up.

    python bench/pass_time.py --model inception_v3 --batch 8 --repeats 5        # CPU, a few minutes
    python bench/pass_time.py --model inception_v3 --device cuda --batch 128 --amp bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from robench.models import load_model, parse_spec
from robench.models.accel import accelerate


def clock(device: torch.device) -> Callable[[], float]:
    if device.type != "cuda":
        return time.process_time

    def synced() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return synced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="inception_v3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    loaded = load_model(parse_spec(args.model), 1000)
    model = accelerate(loaded.module.to(device).eval(), args.amp, args.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, loaded.input.channels, *loaded.input.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    def gradient() -> None:
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    now = clock(device)
    times: dict[str, list[float]] = {"forward": [], "forward+backward": []}
    forward(), gradient()  # warm-up
    for _ in range(args.repeats):
        for name, work in (("forward", forward), ("forward+backward", gradient)):
            start = now()
            work()
            times[name].append((now() - start) / args.batch)
    size = "x".join(map(str, (loaded.input.channels, *loaded.input.size)))
    print(f"{args.model} ({size}), batch {args.batch}, {device}, {args.threads} thread(s), amp {args.amp or 'no'}, "
          f"{args.repeats} repeats: seconds per image (median)")
    for name, ts in times.items():
        print(f"  {name:<18}{statistics.median(ts):.4f} s   (min {min(ts):.4f}, max {max(ts):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
