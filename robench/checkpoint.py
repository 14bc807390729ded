"""Self-describing checkpoints: safetensors weights plus robench metadata.

The metadata (arch, num_classes, input size, mean/std, ...) lets
``robench eval path.safetensors`` rebuild the model with nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from robench.errors import RobenchError
from robench.files import atomic_write

META_KEY = "robench"


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights and metadata atomically (a crash never leaves half a file)."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)}))


def read_metadata(path: Path) -> dict[str, Any] | None:
    """robench metadata of a .safetensors file, or None if it has none."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise RobenchError(f"cannot read checkpoint {path}: {e}; is it a complete .safetensors file?") from None
    if META_KEY not in meta:
        return None
    try:
        return json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise RobenchError(f"checkpoint {path} has unreadable robench metadata") from None
