"""Model specs -> models that take [0, 1] pixels, with their input config and a weights hash.

A spec is ``[LABEL=]MODEL[@CHECKPOINT][?KEY=VALUE&...]``, where MODEL is a timm name, a
robench checkpoint (``CHECKPOINT.safetensors`` carries its own architecture and
preprocessing), ``zoo:NAME``, or a factory (``FILE.py:CALLABLE``, ``package.module:CALLABLE``:
any PyTorch classifier, see ``robench.models.factories``). The query sets the model's preprocessing
(``robench.models.preprocess``).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import socket
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from robench.data import InputConfig
from robench.errors import FieldError, RobenchError
from robench.models import factories, zoo
from robench.models.checkpoint import INPUT_KEYS, data_config, input_metadata, model_kwargs, read_metadata
from robench.models.preprocess import Preprocess, split_query

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec; ``name`` is None when the checkpoint names the architecture."""

    text: str
    label: str
    name: str | None  # a timm name or a factory (FILE.py:CALLABLE, package.module:CALLABLE)
    checkpoint: Path | None
    preprocess: Preprocess = field(default_factory=Preprocess)  # the spec's own ?key=value overrides

    @property
    def is_factory(self) -> bool:
        """Is the model built by the user's code (``robench.models.factories``)?"""
        return self.name is not None and factories.is_factory(self.name)


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
    """Split ``[LABEL=]MODEL[@CHECKPOINT][?KEY=VALUE&...]``; the label defaults to MODEL, callable or file stem.

    A ``=`` or ``@`` belongs to a path when what comes before it looks like one
    (``runs/lr=0.1/m.safetensors``, ``./v1@2.safetensors``).
    """
    unprintable = next((c for c in text if not c.isprintable()), None)
    if unprintable is not None:  # a label reaches terminals, logs, Markdown and XML: no escape sequences
        raise FieldError("models", f"model spec {text!r} holds the control character {unprintable!r}; "
                                   f"write the label and path in printable characters")
    body, preprocess = split_query(text)
    label, eq, rest = body.partition("=")
    if not eq or "@" in label or looks_like_path(label):
        label, rest = "", body
    if rest.startswith("zoo:"):
        entry = zoo.get(rest[4:])
        return ModelSpec(text, label or entry.name, None, entry.path, preprocess)
    name, at, ckpt = rest.partition("@")
    if at and looks_like_path(name) and not factories.is_factory(name):
        name, at, ckpt = rest, "", ""
    if not rest or (at and not (name and ckpt)):
        raise RobenchError(f"bad model spec '{text}'; use [LABEL=]NAME[@CHECKPOINT], e.g. resnet18@weights.pth, "
                           f"or FILE.py:CALLABLE[@CHECKPOINT]")
    checkpoint = Path(ckpt) if at else None
    if ":" in name and not name.startswith(HUB_PREFIXES) and not factories.is_factory(name):
        raise RobenchError(f"bad model spec '{text}': a factory is FILE.py:CALLABLE or package.module:CALLABLE, "
                           f"e.g. examples/lenet.py:LeNet")
    if factories.is_factory(name):
        return ModelSpec(text, label or name.rpartition(":")[2], name, checkpoint, preprocess)
    if not at and looks_like_path(name):
        path = Path(name)
        return ModelSpec(text, label or path.name.split(".")[0], None, path, preprocess)
    return ModelSpec(text, label or name, name, checkpoint, preprocess)


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


@dataclass
class LoadedModel:
    """A ready model and what results need to record about it."""

    spec: ModelSpec
    arch: str  # a timm name or the factory (FILE.py:CALLABLE)
    module: Normalized
    input: InputConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    weights_sha256: str
    weights: str = "checkpoint"  # "checkpoint", "hub", "factory" (what the user's code made) or "random"
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one line each, for the run's warnings: defaults it chose
    input_from: str = "checkpoint"  # checkpoint, timm_pretrained_cfg, module_pretrained_cfg or identity
    overrides: Preprocess = field(default_factory=Preprocess)  # the options' and the spec's, over input_from

    def function(self) -> list[Any]:
        """What decides the function attacked: weights hash and input config (mean/std may be overridden).

        Resume states and the example cache key on it, so a run with other preprocessing is another run.
        """
        return [self.weights_sha256, input_metadata(self.input, self.mean, self.std)]

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return {
            "label": self.spec.label, "spec": self.spec.text, "arch": self.arch,
            "checkpoint": str(self.spec.checkpoint) if self.spec.checkpoint else None,
            "weights": self.weights, "weights_sha256": self.weights_sha256, "num_classes": self.num_classes,
            **input_metadata(self.input, self.mean, self.std), "input_from": self.input_from,
            "input_overrides": self.overrides.describe(),
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
    """The state dict of a checkpoint file, read without running code and without inflating anything first.

    torch's warnings (e.g. about a pickle protocol) are folded into the one error line, or dropped
    when the file loads: they are about the file's format, which either loads or is refused.
    """
    from timm.models import load_state_dict

    if not path.is_file():
        raise RobenchError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        check_archive(path)
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        try:
            return load_state_dict(str(path), use_ema=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle, zip and safetensors errors differ
            reason = _load_failure(e, [str(w.message) for w in heard])
    raise RobenchError(f"cannot load checkpoint {path}: {reason}")


def _load_failure(e: Exception, heard: list[str]) -> str:
    """Why torch (or safetensors) could not load a checkpoint, in a few words."""
    protocol = next((m for m in heard if "pickle protocol" in m), None)
    if "Unsupported global" in str(e):  # torch's weights_only unpickler met a class or function
        names = sorted(_unsafe_globals(str(e)))  # timm lists them from a set: sorted, the message is stable
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (f"refused: it needs pickled objects ({listed or 'classes or functions'}), which robench does not "
                f"load (unpickling them can run code); save a plain state dict (torch.save(model.state_dict(), "
                f"FILE)) or .safetensors")
    if protocol is not None:
        number = re.search(r"protocol (\d+)", protocol)
        return (f"it is pickled with protocol {number.group(1) if number else '?'}, which "
                f"torch.load(weights_only=True) cannot read; load it in trusted Python and save it again with "
                f"torch.save (or as .safetensors)")
    if "weights_only" in str(e) or "Unpickl" in type(e).__name__:
        return "it is corrupt or not a PyTorch checkpoint"
    if "wrong byte size" in str(e):  # a legacy checkpoint whose tensor claims more bytes than follow
        return "it is corrupt: a tensor claims more bytes than the file holds"
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _unsafe_globals(message: str) -> list[str]:
    """The pickled globals a weights_only load refused, from timm's list ("Unsupported globals: a, b.") or
    torch's own message ("Unsupported global: GLOBAL a.b was not ...")."""
    listed = re.search(r"Unsupported globals: (.*?)\.(?: |$)", message)
    if listed:
        return [n.strip() for n in listed.group(1).split(",") if n.strip()]
    return list(dict.fromkeys(re.findall(r"Unsupported global: GLOBAL (\S+)", message)))


def check_archive(path: Path) -> None:
    """Refuse a zip checkpoint whose records would inflate: torch.save stores every record uncompressed.

    A compressed record, or records claiming more bytes than the file holds, would be inflated by
    torch.load before anything could refuse them (a 5 MB file can hold 4 GiB of zeros). Legacy
    (non-zip) checkpoints are plain pickles with raw storage bytes: nothing in them inflates.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.load's own test for its zip format
            return
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise RobenchError(f"cannot load checkpoint {path}: it is a corrupt zip archive ({e})") from None
    packed = next((r for r in records if r.compress_type != zipfile.ZIP_STORED), None)
    if packed is not None:
        raise RobenchError(f"cannot load checkpoint {path}: its record {packed.filename} is compressed (zip method "
                           f"{packed.compress_type}), which torch.save never does, and robench does not inflate it "
                           f"(a possible decompression bomb); save the weights again with torch.save or as "
                           f".safetensors")
    claimed, size = sum(r.file_size for r in records), path.stat().st_size
    if claimed > size or any(r.file_size != r.compress_size for r in records):
        raise RobenchError(f"cannot load checkpoint {path}: its records claim {claimed} bytes in a file of {size}; "
                           f"it is corrupt or crafted, so robench does not read it; save the weights again")


def _keys(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = ", ..." if len(keys) > 3 else ""
    return f"{len(keys)} {kind} keys ({', '.join(keys[:3])}{more})"


def _fit(model: nn.Module, state: dict[str, Tensor], spec: ModelSpec, arch: str) -> None:
    """Load strictly, or name every missing, unexpected and wrongly shaped key in one line.

    An integer (or bool) tensor for a float parameter or buffer is refused too: load_state_dict
    would cast it silently, and an int8 checkpoint would then score at chance.
    Integer buffers (BatchNorm's num_batches_tracked) take integers as they should.
    """
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
    integer = [k for k in own if own[k].is_floating_point() and not state[k].is_floating_point()]
    if integer:
        raise RobenchError(
            f"checkpoint {spec.checkpoint} holds integer tensors where {arch} has float ones: "
            f"{_keys('integer', integer)}; loading would cast their values to float unscaled (a quantized "
            f"checkpoint?): dequantize it and save float weights"
        )
    model.load_state_dict(state, strict=True)


def load_model(
    spec: ModelSpec, num_classes: int, pretrained: bool = False, device: str | torch.device = "cpu",
    native: tuple[int, int, int] | None = None, preprocess: Preprocess | None = None,
) -> LoadedModel:
    """Build, load and wrap a model; it comes back in eval mode on ``device``.

    num_classes comes from the checkpoint when it says, else from the dataset (a factory that
    does not take ``num_classes`` decides its own). Hub weights are fetched only with
    ``pretrained`` or for a NAME.TAG with no checkpoint. ``native`` is the dataset's own
    (C, H, W), the input of a factory model that does not say what it wants; ``preprocess``
    overrides every model's input config, and the spec's own query overrides that.
    Raises RobenchError for anything that cannot load, or whose forward fails on its input.
    """
    meta = _checkpoint_meta(spec)
    arch = spec.name or meta.get("arch")
    if not arch:
        raise RobenchError(
            f"checkpoint {spec.checkpoint} does not name its architecture; give it as NAME@{spec.checkpoint}"
        )
    if spec.name is None and factories.is_factory(arch):
        raise RobenchError(f"checkpoint {spec.checkpoint} was trained from the factory {arch}; robench never imports "
                           f"code a file names: give the factory yourself, as {arch}@{spec.checkpoint}")
    if spec.name is None and (not isinstance(arch, str) or arch.startswith(HUB_PREFIXES)):
        raise RobenchError(f"checkpoint {spec.checkpoint} names {arch!r} as its architecture; robench fetches nothing "
                           f"a file names: give the architecture yourself, as NAME@{spec.checkpoint}")
    wanted = int(meta.get("num_classes", num_classes))
    overrides = spec.preprocess.over(preprocess or Preprocess())
    if factories.is_factory(arch):
        model, weights = factories.build(arch, wanted), "factory"  # its code may load weights of its own
        defaults, notes = _factory_config(model, native, spec.label, meta, overrides)
    else:
        model, weights = _timm_model(spec, arch, meta, wanted, pretrained, overrides)
        defaults, notes = _timm_config(model), []
    if spec.checkpoint is not None:
        _fit(model, _load_state(spec.checkpoint), spec, arch)
        weights = "checkpoint"
    cfg, more = _input_config(model, overrides.apply(data_config(meta, defaults)), spec.label, overrides)
    model.eval()
    wrapped, input_cfg = wrap(model, cfg)
    wrapped = wrapped.to(device).eval()
    classes, note = _probe(wrapped, input_cfg, spec.label)
    source = _input_source(model, arch, meta)
    if source == "timm_pretrained_cfg" and spec.checkpoint is not None and not overrides:
        more.append(f"model '{spec.label}': its weights carry no input config, so robench uses timm's "
                    f"pretrained_cfg for {arch.partition('.')[0]}: {_input_text(input_cfg, cfg)}; if it was "
                    f"trained otherwise, set --input-size/--crop-pct/--mean/--std (or SPEC?input-size=C,H,W&...)")
    return LoadedModel(spec=spec, arch=arch, module=wrapped, input=input_cfg, mean=_floats(cfg["mean"]),
                       std=_floats(cfg["std"]), num_classes=classes, weights_sha256=weights_sha256(model),
                       weights=weights, meta=meta, notes=notes + more + note, input_from=source,
                       overrides=overrides)


def _input_source(model: nn.Module, arch: str, meta: dict[str, Any]) -> str:
    """Where a model's input config comes from, before any override: its robench checkpoint, a pretrained_cfg
    (timm's for the architecture, or the factory module's own), or identity (a factory module without one)."""
    if any(key in meta for key in INPUT_KEYS):
        return "checkpoint"
    if not factories.is_factory(arch):
        return "timm_pretrained_cfg"
    return "module_pretrained_cfg" if _own_cfg(model) else "identity"


def _input_text(input_cfg: InputConfig, cfg: dict[str, Any]) -> str:
    """"3x160x160 px, crop 0.95, bilinear, mean 0.5,0.5,0.5, std 0.5,0.5,0.5" for messages."""
    numbers = lambda values: ",".join(f"{v:.4g}" for v in _floats(values))  # noqa: E731
    return (f"{input_cfg.channels}x{input_cfg.size[0]}x{input_cfg.size[1]} px, crop {input_cfg.crop_pct:g}, "
            f"{input_cfg.interpolation}, mean {numbers(cfg['mean'])}, std {numbers(cfg['std'])}")


def training_model(arch: str, num_classes: int, native: tuple[int, int, int] | None,
                   size: int) -> tuple[Normalized, InputConfig]:
    """A fresh model to train (a timm name or a factory taking ``num_classes``), wrapped, fed whole images at ``size``.

    Raises RobenchError if a factory's model does not give ``num_classes`` logits.
    """
    if factories.is_factory(arch):
        model = factories.build(arch, num_classes)
        cfg, _ = _factory_config(model, native, arch, {}, Preprocess())
    else:
        import timm

        check_arch(arch)
        model = timm.create_model(arch, num_classes=num_classes)
        cfg = _timm_config(model)
    whole = {**cfg, "input_size": (cfg["input_size"][0], size, size), "crop_pct": 1.0, "crop_mode": "center"}
    cfg, _ = _input_config(model, whole, arch, Preprocess())
    wrapped, input_cfg = wrap(model.eval(), cfg)
    classes, _ = _probe(wrapped, input_cfg, arch)
    if classes != num_classes:
        raise RobenchError(f"model '{arch}' gives {classes} logits but the data has {num_classes} classes; "
                           f"let the factory take num_classes=")
    return wrapped, input_cfg


def check_name(arch: str) -> None:
    """Raise a RobenchError now if ``arch`` (a timm name or a factory) cannot be built."""
    if factories.is_factory(arch):
        factories.find(arch)
    else:
        check_arch(arch)


def _timm_model(spec: ModelSpec, arch: str, meta: dict[str, Any], num_classes: int, pretrained: bool,
                overrides: Preprocess) -> tuple[nn.Module, str]:
    """A timm model (hub, checkpoint or random weights) sized to the checkpoint's head and stem.

    A plain state dict does not say num_classes or in_chans: its classifier and first conv do.
    An input size override with one channel makes a 1-channel model (timm's in_chans=1).
    """
    check_arch(arch)
    hub = spec.checkpoint is None and (pretrained or _has_hub_weights(arch))
    kwargs = model_kwargs(meta, spec.checkpoint) if spec.checkpoint is not None else {}
    if overrides.input_size is not None and overrides.input_size[0] != 3:
        kwargs["in_chans"] = overrides.input_size[0]
    if not hub:
        kwargs["num_classes"] = num_classes
    model = _create(arch, hub, kwargs)
    if spec.checkpoint is not None:
        state = _load_state(spec.checkpoint)
        fitted = {**kwargs, **_head_and_stem(model, state, "num_classes" not in meta)}
        if fitted != kwargs:
            model = _create(arch, False, fitted)
    return model, "hub" if hub else "random"


def _head_and_stem(model: nn.Module, state: dict[str, Tensor], head: bool) -> dict[str, int]:
    """num_classes (if ``head``) and in_chans a plain state dict was trained with, from its weights."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    found = {}
    names = {"num_classes": cfg.get("classifier"), "in_chans": cfg.get("first_conv")} if head else \
        {"in_chans": cfg.get("first_conv")}
    for key, name in names.items():
        name = name[0] if isinstance(name, (tuple, list)) else name
        weight = state.get(f"{name}.weight") if name else None
        if weight is not None and weight.ndim >= 2:
            found[key] = int(weight.shape[0 if key == "num_classes" else 1])
    return found


def _timm_config(model: nn.Module) -> dict[str, Any]:
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)


def _factory_config(model: nn.Module, native: tuple[int, int, int] | None, label: str, meta: dict[str, Any],
                    overrides: Preprocess) -> tuple[dict[str, Any], list[str]]:
    """A factory model's input config: its own ``pretrained_cfg`` (timm's convention), else identity.

    Without one robench feeds [0, 1] pixels as they are (mean 0, std 1) at the dataset's own
    size, and says so unless a checkpoint or the user set mean and std.
    """
    from timm.data import resolve_data_config

    own = _own_cfg(model)
    if own:
        if not isinstance(own, Mapping):
            raise RobenchError(f"model '{label}': its pretrained_cfg is a {type(own).__name__}, not a dict "
                               f"of timm data-config keys (input_size, mean, std, interpolation, crop_pct)")
        try:
            cfg = resolve_data_config(pretrained_cfg=dict(own))
            Preprocess(mean=_floats(cfg["mean"]), std=_floats(cfg["std"]), input_size=tuple(cfg["input_size"]),
                       crop_pct=float(cfg["crop_pct"]))
        except (FieldError, TypeError, ValueError, AssertionError) as e:
            reason = e.named("pretrained_cfg." + e.field) if isinstance(e, FieldError) else str(e)
            raise RobenchError(f"model '{label}': bad pretrained_cfg: {reason}") from None
        return cfg, []
    c, h, w = native or (3, 224, 224)
    c = _stem_channels(model) or c
    cfg = {"input_size": (c, h, w), "interpolation": "bilinear", "mean": (0.0,) * c, "std": (1.0,) * c,
           "crop_pct": 1.0, "crop_mode": "center"}
    told = ("mean" in meta and "std" in meta) or (overrides.mean is not None and overrides.std is not None)
    size = "x".join(map(str, overrides.input_size)) if overrides.input_size else f"the data's own size, {c}x{h}x{w}"
    notes = [] if told else [
        f"model '{label}' has no pretrained_cfg: robench feeds it [0, 1] pixels unnormalized (mean 0, std 1) at "
        f"{size}; if it expects otherwise, say so with ?mean=..&std=..&input-size=C,H,W or --mean/--std"]
    return cfg, notes


def _own_cfg(model: nn.Module) -> Any:
    """The data config a module carries in timm's convention (``pretrained_cfg``, or the older ``default_cfg``)."""
    return getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)


def _stem_channels(model: nn.Module) -> int | None:
    """The channels a model's first convolution takes: timm's ``first_conv``, else the first Conv2d."""
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("first_conv") if isinstance(cfg, Mapping) else None
    name = name[0] if isinstance(name, (tuple, list)) else name
    if name:
        try:
            return int(model.get_submodule(name).in_channels)
        except (AttributeError, TypeError):
            pass
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(conv.in_channels) if conv is not None else None


def _input_config(model: nn.Module, cfg: dict[str, Any], label: str,
                  overrides: Preprocess) -> tuple[dict[str, Any], list[str]]:
    """The config with channels the model's stem takes, and one mean/std value per channel.

    timm keeps a 3-channel config for an ``in_chans=1`` model; its 3 means (and stds) then
    become their average, said in a note. One value for 3 channels is repeated, as timm does.
    """
    c, h, w = (int(v) for v in cfg["input_size"])
    stem = _stem_channels(model)
    notes = []
    if stem is not None and stem != c:
        if overrides.input_size is not None:
            raise RobenchError(f"model '{label}' takes {stem} channel(s) (its first convolution) but the input size "
                               f"asked has {c}; give input-size {stem},{h},{w}")
        c = stem
    if c not in (1, 3):
        raise RobenchError(f"model '{label}' takes {c} input channels; robench feeds 1 (grayscale) or 3 (RGB), "
                           f"so give a model whose first layer takes one of those")
    mean, std = _floats(cfg["mean"]), _floats(cfg["std"])
    if c == 1 and len(mean) == 3 and len(std) == 3:
        if len(set(mean)) > 1 or len(set(std)) > 1:
            notes.append(f"model '{label}' takes 1 channel; its 3-channel mean and std are averaged to "
                         f"{sum(mean) / 3:.4g} and {sum(std) / 3:.4g} (set --mean/--std to choose)")
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    mean, std = (mean * c if len(mean) == 1 else mean), (std * c if len(std) == 1 else std)
    if len(mean) != c or len(std) != c:
        raise RobenchError(f"model '{label}' takes {c} channel(s) but its mean has {len(mean)} values and its std "
                           f"{len(std)}; give one per channel (or one for all), e.g. --mean {','.join(['0.5'] * c)} "
                           f"or SPEC?mean={','.join(['0.5'] * c)}")
    return {**cfg, "input_size": (c, h, w), "mean": mean, "std": std}, notes


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
        raise RobenchError(
            f"model '{label}' fails on a batch of shape {list(shape)}: {type(e).__name__}: {text}; give the input "
            f"it takes with ?input-size=C,H,W (or --input-size)") from None
    try:
        logits = logits_of(out)
    except RobenchError as e:
        raise RobenchError(f"model '{label}': {e}") from None
    if logits.ndim != 2 or logits.shape[0] != 2 or not logits.is_floating_point():
        raise RobenchError(f"model '{label}' returns {logits.dtype} logits of shape {list(logits.shape)} for a batch "
                           f"of 2; robench needs float logits of shape [batch, classes]")
    kind = output_kind(out)
    what = type(out).__name__ if isinstance(out, (tuple, list, Mapping)) else f"{type(out).__name__} object"
    note = [f"model '{label}' returns a {what}; robench takes its logits from output{kind}"] if kind else []
    return int(logits.shape[1]), note


def _checkpoint_meta(spec: ModelSpec) -> dict[str, Any]:
    """robench metadata of the spec's checkpoint ({} for plain weights)."""
    ckpt = spec.checkpoint
    if ckpt is None:
        return {}
    if not ckpt.is_file():
        raise RobenchError(f"checkpoint not found: {ckpt} (model spec '{spec.text}'); check the path")
    meta = read_metadata(ckpt) if ckpt.suffix == ".safetensors" else None
    if meta is None and spec.name is None:
        raise RobenchError(
            f"{ckpt} carries no robench metadata naming its architecture; give it as NAME@{ckpt}, e.g. resnet18@{ckpt}"
        )
    return meta or {}


def checkpoint_dataset(spec: ModelSpec) -> str | None:
    """The data spec a robench checkpoint says its model trained on (``dataset: "fashion-mnist:train"``), or None."""
    dataset = _checkpoint_meta(spec).get("dataset")
    if not isinstance(dataset, str) or not dataset.endswith(":train"):
        return None
    return dataset.removesuffix(":train") or None


def checkpoint_classes(spec: ModelSpec) -> list[str] | None:
    """The class names a spec's robench checkpoint records in index order; None when it records none."""
    classes = _checkpoint_meta(spec).get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) else None
