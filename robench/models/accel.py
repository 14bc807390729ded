"""A model run faster on an accelerator: channels-last memory, autocast (bfloat16 or float16), torch.compile.

Channels-last changes only how tensors are laid out; autocast and compile can change the
numbers, so they are opt-in and the run checks them (``robench.run.precision``).
"""

from __future__ import annotations

import importlib.util
import shutil

import torch
from torch import Tensor, nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = tuple(AMP_DTYPES)


def channels_last_default(device: torch.device) -> bool:
    """Channels-last by default on CUDA only: on the CPU its kernels are other code, not shown to give equal logits."""
    return device.type == "cuda"


def amp_problem(amp: str | None, device: torch.device) -> str | None:
    """Why this device cannot autocast to ``amp`` ("fp16 on the CPU"), else None."""
    if amp is None:
        return None
    if device.type == "cpu":
        return None if amp == "bf16" else "float16 autocast needs a CUDA device; on the CPU use bf16"
    if device.type != "cuda":
        return f"autocast is supported here on cpu (bf16) and cuda only, not on {device.type}"
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        return f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16; use fp16"
    return None


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot run on this device with the installed torch, else None."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (it needs torch 2.0 or later)"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs triton (pip install triton)"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++", "cc")):
        return "torch.compile on the CPU needs a C++ compiler on PATH (c++, g++ or clang++)"
    return None


class Accelerated(nn.Module):
    """``model`` with its input in channels-last memory and its forward under autocast; logits come out float32.

    Float32 logits keep every loss, comparison and recorded number in one precision, so only
    the model's own forward (and its backward, through autocast) runs in the lower one.
    """

    def __init__(self, model: nn.Module, amp: str | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.model, self.amp, self.channels_last = model, amp, channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp is None:
            return self.model(x)
        with torch.autocast(x.device.type, dtype=AMP_DTYPES[self.amp]):
            out = self.model(x)
        return out.float()


def accelerate(model: nn.Module, amp: str | None = None, channels_last: bool = False,
               compile: bool = False) -> nn.Module:
    """``model`` as the run's settings ask; itself when they ask nothing. Channels-last converts it in place."""
    if not (amp or channels_last or compile):
        return model
    if channels_last:
        model.to(memory_format=torch.channels_last)
    fast: nn.Module = Accelerated(model, amp, channels_last)
    if compile:
        fast = torch.compile(fast)  # type: ignore[assignment]  # an OptimizedModule, which is an nn.Module
    return fast
