"""Device names as written (auto, cpu, cuda, cuda:N, mps), checked by form without torch.

Whether the device exists is asked of torch when a run starts (robench.core.distributed); the
form is checked when a configuration is built, and by the CLI before it imports torch.
"""

from __future__ import annotations

import re

DEVICES = "auto, cpu, cuda, cuda:N or mps"
_FORM = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def device_problem(device: object) -> str | None:
    """What a device name breaks ("be one of auto, cpu, ..."), or None when its form is right."""
    if isinstance(device, str) and _FORM.fullmatch(device):
        return None
    return f"be one of {DEVICES}"
