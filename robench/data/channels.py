"""Channel conversion: gray images replicated, RGB as its luminance, and the note a run prints about it."""

from __future__ import annotations

from torch import Tensor

from robench.data.inputs import Source

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's "L": RGB -> one channel


def channel_note(label: str, channels: int, source: Source) -> str | None:
    """What feeding ``source`` to a model of ``channels`` changes about its colours: only RGB to 1 channel is said.

    Gray images go to a 3-channel model replicated, which changes nothing a model could see.
    """
    native = source.native
    if channels == 1 and native is not None and native[0] == 3:
        r, g, b = LUMINANCE
        return (f"model '{label}' takes 1 channel: the RGB images of {source.name} are converted to luminance "
                f"(L = {r:g} R + {g:g} G + {b:g} B)")
    return None


def to_channels(images: Tensor, channels: int) -> Tensor:
    """[N, C, H, W] with 1 or 3 channels -> ``channels``: gray replicated, or RGB as its luminance.

    Linear, with weights summing to 1: a perturbation converted stays within its L-inf bound.
    """
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    weights = images.new_tensor(LUMINANCE).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)
