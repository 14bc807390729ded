"""Model specs -> models that take [0, 1] pixels, with their input config and a weights hash.

A spec is ``[LABEL=]NAME[@CHECKPOINT]`` or ``[LABEL=]CHECKPOINT.safetensors``
(a robench checkpoint carries its own architecture and preprocessing).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from robench import zoo
from robench.checkpoint import data_config, input_metadata, read_metadata
from robench.data import InputConfig
from robench.errors import RobenchError

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec; ``name`` is None when the checkpoint names the architecture."""

    text: str
    label: str
    name: str | None
    checkpoint: Path | None


HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def looks_like_path(text: str) -> bool:
    """A checkpoint suffix or a slash (``./NAME`` included) makes a text a path; anything else is a name.

    The rule is written, not guessed from the filesystem: ``resnet18`` stays a timm name even
    when a file of that name lies in the working folder (``./resnet18`` names the file).
    """
    if text.startswith(HUB_PREFIXES):
        return False
    return text.endswith(CHECKPOINT_SUFFIXES) or "/" in text


def parse_spec(text: str) -> ModelSpec:
    """Split ``[LABEL=]NAME[@CHECKPOINT]`` or ``[LABEL=]zoo:NAME``; the label defaults to NAME or the file's stem.

    A ``=`` or ``@`` belongs to a path when what comes before it looks like one
    (``runs/lr=0.1/m.safetensors``, ``./v1@2.safetensors``).
    """
    label, eq, rest = text.partition("=")
    if not eq or "@" in label or looks_like_path(label):
        label, rest = "", text
    if rest.startswith("zoo:"):
        entry = zoo.get(rest[4:])
        return ModelSpec(text, label or entry.name, None, entry.path)
    name, at, ckpt = rest.partition("@")
    if at and looks_like_path(name):
        name, at, ckpt = rest, "", ""
    if not rest or (at and not (name and ckpt)):
        raise RobenchError(f"bad model spec '{text}'; use [LABEL=]NAME[@CHECKPOINT], e.g. resnet18@weights.pth")
    if not at and looks_like_path(name):
        path = Path(name)
        return ModelSpec(text, label or path.name.split(".")[0], None, path)
    checkpoint = Path(ckpt) if at else None
    return ModelSpec(text, label or name, name, checkpoint)


class Normalized(nn.Module):
    """[0, 1] pixels in, logits out: the model's own mean/std are applied inside.

    Attacks then clip and measure eps in pixel space, whatever the model's preprocessing.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def wrap(model: nn.Module, cfg: dict[str, Any]) -> tuple[Normalized, InputConfig]:
    """``model`` taking [0, 1] pixels, with the mean/std of its timm data config inside, and the pixels it wants.

    Training and loading both wrap here, so a model is attacked through the normalization it trained with.
    """
    return Normalized(model, _floats(cfg["mean"]), _floats(cfg["std"])), InputConfig.from_timm(cfg)


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass
class LoadedModel:
    """A ready model and what results need to record about it."""

    spec: ModelSpec
    arch: str
    module: Normalized
    input: InputConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    weights_sha256: str
    weights: str = "checkpoint"  # "checkpoint", "hub" or "random" (no checkpoint, no --pretrained)
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return {
            "label": self.spec.label, "spec": self.spec.text, "arch": self.arch,
            "checkpoint": str(self.spec.checkpoint) if self.spec.checkpoint else None,
            "weights": self.weights, "weights_sha256": self.weights_sha256, "num_classes": self.num_classes,
            **input_metadata(self.input, self.mean, self.std),
        }


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_arch(name: str) -> None:
    """Raise a RobenchError suggesting close names for an unknown timm model or tag."""
    import timm

    if name.startswith(HUB_PREFIXES):
        return
    arch, dot, _ = name.partition(".")
    if timm.is_model(arch):
        if dot and not _has_hub_weights(name):
            tags = ", ".join(timm.list_pretrained(f"{arch}.*")[:5]) or "none"
            raise RobenchError(f"unknown pretrained tag in '{name}'; known for {arch}: {tags}")
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()` for names"
    raise RobenchError(f"unknown model '{name}'; {hint}")


def _has_hub_weights(name: str) -> bool:
    import timm

    if name.startswith(HUB_PREFIXES):
        return True
    return "." in name and name in timm.list_pretrained(name)


def _create(arch: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    with _hub_offline():  # cached weights first, without touching the network
        try:
            return timm.create_model(arch, pretrained=True, **kwargs)
        except Exception:  # noqa: BLE001, S110 - not cached: try the network below
            pass
    if _offline():
        raise RobenchError(
            f"cannot load pretrained weights for '{arch}': not cached and HF_HUB_OFFLINE is set; "
            f"give local weights instead: {arch.split('.')[0]}@/path/to/weights.safetensors"
        )
    host = _weights_host(arch)
    if host and not _reachable(host):
        raise RobenchError(
            f"cannot load pretrained weights for '{arch}': not cached and {host} is unreachable; "
            f"give local weights instead: {arch.split('.')[0]}@/path/to/weights.safetensors"
        )
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - hub and network errors come in many types
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RobenchError(
            f"cannot load pretrained weights for '{arch}' ({reason}); without network, "
            f"give local weights instead: {arch.split('.')[0]}@/path/to/weights.safetensors"
        ) from None


def _offline() -> bool:
    """Has the user asked huggingface_hub to stay offline? Then robench does not probe the network either."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return flag or bool(constants.HF_HUB_OFFLINE)


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its cache only (it reads this flag at call time)."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _weights_host(arch: str) -> str | None:
    """The host timm would download ``arch``'s weights from, if it can tell."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    cfg = None if arch.startswith(HUB_PREFIXES) else get_pretrained_cfg(arch)
    if cfg is None or cfg.hf_hub_id:
        return urlparse(constants.ENDPOINT).hostname
    return urlparse(cfg.url).hostname if cfg.url else None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to ``host``:443? Behind a proxy, assume yes."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_state(path: Path) -> dict[str, Tensor]:
    from timm.models import load_state_dict

    if not path.is_file():
        raise RobenchError(f"checkpoint not found: {path}")
    try:
        return load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and safetensors errors differ
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "Unsupported global" in str(e):  # torch's weights_only unpickler met a class or function
            first = "it holds pickled objects other than tensors, which robench refuses to load"
        elif "weights_only" in str(e) or "Unpickl" in type(e).__name__:
            first = "it is corrupt or not a PyTorch checkpoint"
        raise RobenchError(f"cannot load checkpoint {path}: {first}") from None


def _classifier_rows(model: nn.Module, state: dict[str, Tensor]) -> int | None:
    """num_classes a plain state dict was trained with, read from its classifier weight."""
    head = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    head = head[0] if isinstance(head, (tuple, list)) else head
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def _keys(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = ", ..." if len(keys) > 3 else ""
    return f"{len(keys)} {kind} keys ({', '.join(keys[:3])}{more})"


def _fit(model: nn.Module, state: dict[str, Tensor], spec: ModelSpec, arch: str) -> None:
    """Load strictly, or name every missing, unexpected and wrongly shaped key in one line."""
    own = model.state_dict()
    problems = [
        _keys("missing", [k for k in own if k not in state]),
        _keys("unexpected", [k for k in state if k not in own]),
        _keys("wrongly shaped", [k for k in own if k in state and state[k].shape != own[k].shape]),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise RobenchError(
            f"checkpoint {spec.checkpoint} does not fit {arch}: {'; '.join(problems)}; is it the right architecture?"
        )
    model.load_state_dict(state, strict=True)


def load_model(
    spec: ModelSpec, num_classes: int, pretrained: bool = False, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Build, load and wrap a model; it comes back in eval mode on ``device``.

    num_classes comes from the checkpoint when it says, else from the dataset.
    Hub weights are fetched only with ``pretrained`` or for a NAME.TAG with no checkpoint.
    """
    from timm.data import resolve_model_data_config

    meta = _checkpoint_meta(spec)
    arch = spec.name or meta.get("arch")
    if not arch:
        raise RobenchError(
            f"checkpoint {spec.checkpoint} does not name its architecture; give it as NAME@{spec.checkpoint}"
        )
    check_arch(arch)
    hub = spec.checkpoint is None and (pretrained or _has_hub_weights(arch))
    kwargs = dict(meta.get("model_kwargs", {}))
    if not hub:
        kwargs["num_classes"] = int(meta.get("num_classes", num_classes))
    model = _create(arch, hub, kwargs)
    if spec.checkpoint is not None:
        state = _load_state(spec.checkpoint)
        rows = _classifier_rows(model, state)
        if "num_classes" not in meta and rows is not None and rows != kwargs["num_classes"]:
            model = _create(arch, False, {**kwargs, "num_classes": rows})
        _fit(model, state, spec, arch)
    loaded = _loaded(spec, arch, model, meta, resolve_model_data_config(model), device)
    loaded.weights = "hub" if hub else "checkpoint" if spec.checkpoint else "random"
    return loaded


def _checkpoint_meta(spec: ModelSpec) -> dict[str, Any]:
    """robench metadata of the spec's checkpoint ({} for plain weights)."""
    ckpt = spec.checkpoint
    if ckpt is None:
        return {}
    if not ckpt.is_file():
        raise RobenchError(f"checkpoint not found: {ckpt}")
    meta = read_metadata(ckpt) if ckpt.suffix == ".safetensors" else None
    if meta is None and spec.name is None:
        raise RobenchError(
            f"{ckpt} carries no robench metadata naming its architecture; give it as NAME@{ckpt}, e.g. resnet18@{ckpt}"
        )
    return meta or {}


def checkpoint_classes(spec: ModelSpec) -> list[str] | None:
    """The class names a spec's robench checkpoint records in index order; None when it records none."""
    classes = _checkpoint_meta(spec).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else None


def _loaded(
    spec: ModelSpec, arch: str, model: nn.Module, meta: dict[str, Any], cfg: dict[str, Any], device: Any
) -> LoadedModel:
    cfg = data_config(meta, cfg)
    model.eval()
    wrapped, input_cfg = wrap(model, cfg)
    return LoadedModel(
        spec=spec, arch=arch, module=wrapped.to(device).eval(), input=input_cfg, mean=_floats(cfg["mean"]),
        std=_floats(cfg["std"]),
        num_classes=int(model.num_classes) if hasattr(model, "num_classes") else int(meta.get("num_classes", 0)),
        weights_sha256=weights_sha256(model), meta=meta,
    )
