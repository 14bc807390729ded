"""Retrain the built-in zoo from its recipes: ``python -m robench.train.zoo_build [NAME ...]``.

Kept apart from ``robench.models.zoo`` (the list every ``zoo:NAME`` spec reads) because only
building needs the trainer; the list then imports nothing above the model loader.
"""

from __future__ import annotations

import sys
from pathlib import Path

from robench.errors import RobenchError
from robench.models.zoo import ZOO, ZOO_DIR
from robench.train.loop import train


def build(names: list[str] | None = None, out_dir: Path = ZOO_DIR) -> list[Path]:
    """Retrain zoo models from their recipes (into the package folder by default).

    Training runs on one CPU thread: float results depend on how work is split between
    threads, and one thread makes the files bit-identical on the same machine.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    written = []
    try:
        for name in names or list(ZOO):
            if name not in ZOO:
                raise RobenchError(f"unknown zoo model '{name}'; known: {', '.join(ZOO)}")
            path = out_dir / f"{name}.safetensors"
            result = train(ZOO[name].config, path)
            written.append(path)
            print(f"{name}: test accuracy {100 * result.meta['val_accuracy']:.1f} % -> {path}", flush=True)
    finally:
        torch.set_num_threads(threads)
    return written


if __name__ == "__main__":
    if any(arg.startswith("-") for arg in sys.argv[1:]):
        sys.exit("usage: python -m robench.train.zoo_build [NAME ...]")
    try:
        build(sys.argv[1:] or None)
    except RobenchError as e:
        sys.exit(f"robench: error: {e}")
