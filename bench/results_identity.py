"""Check that a refactor left every number alone: the zoo runs' results files, before and after.

Run: python bench/results_identity.py write DIR      (the installed robench writes the zoo runs into DIR)
     python bench/results_identity.py compare A B    (exit 1 and the differing JSON paths if they differ)

The zoo runs are the README's: ``robench eval`` (the default pair, default suite), ``robench
transfer-matrix`` on four zoo models and ``robench leak-check`` (its default models), all on
the 360 digits test images, plus the eval and transfer runs at ``--batch-size 7`` (per-sample
seeding: the same numbers at any batch size) and the ``autoattack`` suite on zoo:resnet-stepll (40 images).
Fields that name the run rather than its numbers
(robench version, the library versions) are left out of the comparison, and checkpoints are
compared by file name (the package may be installed elsewhere; weights hashes are compared).
Not a test: a full write takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RUNS = {
    "eval": ["eval"],
    "eval-bs7": ["eval", "--batch-size", "7"],
    "transfer": ["transfer-matrix", "zoo:effnet-base", "zoo:effnet-stepll", "zoo:resnet-base", "zoo:resnet-stepll"],
    "transfer-bs7": ["transfer-matrix", "zoo:effnet-base", "zoo:resnet-stepll", "--batch-size", "7"],
    "leak": ["leak-check"],
    # issue 28's speed work: AutoAttack's four stages on a robust zoo model, where they have survivors to work on
    "eval-autoattack": ["eval", "-m", "zoo:resnet-stepll", "--attacks", "autoattack", "--eps", "8,16", "--limit", "40"],
}
IGNORED = {"robench", "robench_version", "created", "timestamp", "versions", "host", "python", "platform"}


def write(folder: Path) -> None:
    """Run every zoo command of RUNS into ``folder``/NAME.json."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for name, args in RUNS.items():
        out = folder / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", "robench", *args, "--out", str(out)], env=env,
                              capture_output=True, text=True)
        if proc.returncode not in (0, 1):  # leak-check and health may exit 1 by design
            sys.exit(f"{name}: exit {proc.returncode}\n{proc.stderr}")
        print(f"{name}: exit {proc.returncode} -> {out}")


def differences(a: Any, b: Any, path: str = "$") -> list[str]:
    """JSON paths where two documents differ, IGNORED keys left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - IGNORED
        return [d for k in sorted(keys) for d in (differences(a.get(k), b.get(k), f"{path}.{k}")
                                                  if k in a and k in b else [f"{path}.{k} (only in one)"])]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path} (length {len(a)} vs {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    if path.endswith(".checkpoint") and isinstance(a, str) and isinstance(b, str):
        a, b = Path(a).name, Path(b).name  # where the package is installed; the weights hash is compared apart
    return [] if a == b or (a != a and b != b) else [f"{path}: {a!r} vs {b!r}"]


def compare(a: Path, b: Path) -> int:
    """Compare every NAME.json of RUNS in folders ``a`` and ``b``; 0 when all are identical."""
    bad = 0
    for name in RUNS:
        diff = differences(json.loads((a / f"{name}.json").read_text()), json.loads((b / f"{name}.json").read_text()))
        print(f"{name}: {'identical' if not diff else f'{len(diff)} differences'}")
        for d in diff[:20]:
            print(f"  {d}")
        bad += bool(diff)
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("write").add_argument("folder", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "write":
        write(args.folder)
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
