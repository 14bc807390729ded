"""Scaling of `robench eval` under torchrun: 2 CPU processes (gloo) against 1, on a fixed workload.

Each side runs the same command line as a fresh process tree, one torch thread per process
(OMP_NUM_THREADS=1), so 2 processes can use at most 2 cores where 1 process uses 1:

    one: python -m robench eval ARGS --out one.json
    two: python -m torch.distributed.run --standalone --nproc-per-node 2 -m robench eval ARGS --out two.json

Where the time goes is split by a second pair of runs on --limit 4 (same models, suite and
launch): their wall time is the fixed cost (interpreter and imports, the process group, model
loading, writing), so ``full - fixed`` is the per-sample work. Efficiency is
T1 / (2 * T2): 1.0 would be perfect scaling; expect less on 2 shared cores. The two results
files must be identical (the script exits 1 if not).

    python bench/scaling.py                  # about 4 minutes on 2 CPU cores
    python bench/scaling.py --rounds 1 --eps 2,4,8,16   # 4x the per-sample work
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from robench.results.read import load_results

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
MODELS = ["zoo:effnet-base", "zoo:resnet-base"]


def suite(eps: str) -> list[str]:
    return ["--attack", "fgsm", "--attack", "pgd", "--eps", eps]


def command(procs: int, limit: int, batch: int, eps: str, out: Path, health: bool) -> list[str]:
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)] if procs > 1 else []
    args = ["eval", *MODELS, *suite(eps), "--limit", str(limit), "--batch-size", str(batch), "--device", "cpu", "-q",
            "--out", str(out)]
    return [sys.executable, *launch, "-m", "robench", *args, *([] if health else ["--no-health"])]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=360, help="digits test images (default: all 360)")
    ap.add_argument("--batch-size", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians are reported")
    ap.add_argument("--health", action="store_true", help="keep the health probes (they run on rank 0 only)")
    ap.add_argument("--eps", default="8", help="pgd and fgsm eps list; more eps, more per-sample work (default 8)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="robench-scaling-"))
    times: dict[tuple[int, str], list[float]] = {(p, k): [] for p in (1, 2) for k in ("full", "fixed")}
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)  # alternate, so load from elsewhere falls on both alike
        for procs in order:
            for kind, limit in (("full", args.limit), ("fixed", 4)):
                out = tmp / f"{procs}-{kind}.json"
                times[(procs, kind)].append(timed(command(procs, limit, args.batch_size, args.eps, out, args.health)))
    one, two = (load_results(tmp / f"{p}-full.json") for p in (1, 2))
    identical = one == two
    med = {k: statistics.median(v) for k, v in times.items()}
    work = {p: med[(p, "full")] - med[(p, "fixed")] for p in (1, 2)}
    print(f"workload: eval {' '.join(MODELS)} {' '.join(suite(args.eps))}, {args.limit} digits images, batch "
          f"{args.batch_size}, health probes {'on' if args.health else 'off'}; {args.rounds} rounds, medians; "
          f"{os.cpu_count()} CPUs")
    print(f"{'':<12}{'1 process':>12}{'2 processes':>14}{'speed-up':>10}{'efficiency':>12}")
    for name, a, b in (("wall", med[(1, "full")], med[(2, "full")]), ("fixed", med[(1, "fixed")], med[(2, "fixed")]),
                       ("per-sample", work[1], work[2])):
        print(f"{name:<12}{a:>11.1f}s{b:>13.1f}s{a / b:>9.2f}x{a / (2 * b):>11.0%}")
    print(f"results identical, id by id: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
