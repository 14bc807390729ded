"""[0, 1] pixels in, logits out: the wrapper that puts a model's own mean/std inside, and the logits of its output.

``_probe`` runs a wrapped model once on the input robench will feed it, so that a model that
does not take it, or does not give logits, is a usage error before any work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robench.data import InputConfig
from robench.errors import FieldError, RobenchError


def logits_of(out: Any) -> Tensor:
    """The logits of a model's output: a tensor, a tuple's first element, a dict's or an object's ``logits``.

    timm's inception_v3 with aux_logits returns a tuple even in eval mode; Hugging Face models
    return an output object. Raises RobenchError naming the type of anything else.
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    raise RobenchError(f"the model returns a {type(out).__name__}{_contents(out)}; robench needs logits: a tensor, "
                       f"a tuple whose first element is one, a dict with 'logits' or an object with .logits")


def _contents(out: Any) -> str:
    if isinstance(out, Mapping):
        return f" with keys {', '.join(map(str, list(out)[:5])) or 'none'}"
    if isinstance(out, (tuple, list)):
        return f" of {len(out)} items, the first a {type(out[0]).__name__}" if out else " that is empty"
    return ""


def output_kind(out: Any) -> str:
    """Where ``logits_of`` finds the logits in an output: "" (it is them), "[0]", "['logits']" or ".logits"."""
    if isinstance(out, Tensor):
        return ""
    if isinstance(out, (tuple, list)):
        return "[0]"
    return "['logits']" if isinstance(out, Mapping) else ".logits"


class Normalized(nn.Module):
    """[0, 1] pixels in, logits out: the model's own mean/std are applied inside.

    Attacks then clip and measure eps in pixel space, whatever the model's preprocessing.
    Outputs that are not a plain tensor are reduced to their logits (``logits_of``).
    """

    mean: Tensor  # [1, C, 1, 1] buffers (nn.Module's attribute lookup alone types them Tensor | Module)
    std: Tensor

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model((x - self.mean) / self.std))


def wrap(model: nn.Module, cfg: dict[str, Any]) -> tuple[Normalized, InputConfig]:
    """``model`` taking [0, 1] pixels, with the mean/std of its timm data config inside, and the pixels it wants.

    Training and loading both wrap here, so a model is attacked through the normalization it trained with.
    """
    return Normalized(model, _floats(cfg["mean"]), _floats(cfg["std"])), InputConfig.from_timm(cfg)


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _probe(model: Normalized, input_cfg: InputConfig, label: str) -> tuple[int, list[str]]:
    """Run a batch of two grey images: the model's number of classes, and a note if its logits are wrapped.

    A forward that fails on the input robench will feed is a usage error, said before any work.
    """
    shape = (2, input_cfg.channels, *input_cfg.size)
    x = torch.full(shape, 0.5, device=model.mean.device)
    try:
        with torch.no_grad():
            out = model.model((x - model.mean) / model.std)
    except Exception as e:  # noqa: BLE001 - any forward error means the input is not what the model takes
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise FieldError(
            "input_size", f"model '{label}' fails on a batch of shape {list(shape)}: {type(e).__name__}: {text}; give "
                          f"the input it takes with ?input-size=C,H,W (or {{name}})") from None
    try:
        logits = logits_of(out)
    except RobenchError as e:
        raise RobenchError(f"model '{label}': {e}") from None
    if logits.ndim != 2 or logits.shape[0] != 2 or not logits.is_floating_point():
        raise RobenchError(f"model '{label}' returns {logits.dtype} logits of shape {list(logits.shape)} for a batch "
                           f"of 2; robench needs float logits of shape [batch, classes]")
    return int(logits.shape[1]), _output_note(out, label) + _precision_note(logits, label)


def _output_note(out: Any, label: str) -> list[str]:
    kind = output_kind(out)
    what = type(out).__name__ if isinstance(out, (tuple, list, Mapping)) else f"{type(out).__name__} object"
    return [f"model '{label}' returns a {what}; robench takes its logits from output{kind}"] if kind else []


_MANTISSA_BITS = {torch.float16: 11, torch.bfloat16: 8}


def _precision_note(logits: Tensor, label: str) -> list[str]:
    """A note if the logits are 16-bit: the attacks' loss and gradients then lose precision.

    At 11 (float16) or 8 (bfloat16) bits of mantissa, attacked predictions differ from the float32
    model's (11 of 40 in issue 26's run), so the robust accuracy is not the float32 model's.
    """
    bits = _MANTISSA_BITS.get(logits.dtype)
    if bits is None:
        return []
    dtype = str(logits.dtype).removeprefix("torch.")
    return [f"model '{label}' gives {dtype} logits, so the attacks' loss and gradients run at {bits} bits of "
            f"mantissa and attacked predictions can differ from float32; for float32 results convert the model "
            f"(e.g. model.float())"]
