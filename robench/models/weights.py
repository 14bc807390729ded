"""A model's weights: their hash, and a checkpoint's state dict read safely and fitted strictly.

Reading refuses what would run code (pickled objects) or inflate (compressed zip records)
before torch sees it; fitting refuses any key, shape or dtype that would load silently wrong.
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from robench.core.files import kind_of
from robench.errors import RobenchError
from robench.models.spec import ModelSpec


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_state(path: Path) -> dict[str, Tensor]:
    """The state dict of a checkpoint file, read without running code and without inflating anything first.

    torch's warnings (e.g. about a pickle protocol) are folded into the one error line, or dropped
    when the file loads: they are about the file's format, which either loads or is refused.
    """
    from timm.models import load_state_dict

    if not path.is_file():
        kind = kind_of(path)
        raise RobenchError(f"checkpoint {path} is {kind}, not a checkpoint file" if kind else
                           f"checkpoint not found: {path}")
    check_not_results(path)
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


def check_not_results(path: Path) -> None:
    """Refuse a robench results file given as a model, saying what it is and which commands read it.

    Told only "not a checkpoint", a newcomer who passed `robench eval`'s output back in tries
    NAME@FILE next, which fails the same way. Only the head is read: results files can be large.
    """
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"{") and b'"schema_version"' in head and b'"robench"' in head:
        raise RobenchError(f"{path} is a robench results file, not a model or checkpoint: read it with "
                           f"`robench report {path}`, or compare new results against it with `robench gate`")


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
    """Load as torch's strict load does, or name every missing, unexpected and wrongly shaped key in one line.

    torch itself decides which keys are missing: its modules' load hooks fill what they know how to
    (a pre-0.4.1 BatchNorm has no num_batches_tracked), and a key comparison of robench's own would
    refuse checkpoints that PyTorch loads. An integer (or bool) tensor for a float parameter or buffer
    is refused too: load_state_dict casts it silently, and an int8 checkpoint would then score at chance.
    Integer buffers (num_batches_tracked) take integers as they should. A refused model is dropped.
    """
    own = model.state_dict()
    shaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    found = model.load_state_dict({k: own[k] if k in shaped else v for k, v in state.items()}, strict=False)
    missing, unexpected = list(found.missing_keys), list(found.unexpected_keys)
    problems = [_keys("missing", missing), _keys("unexpected", unexpected), _keys("wrongly shaped", shaped)]
    if any(problems):
        raise RobenchError(f"checkpoint {spec.checkpoint} does not fit {arch}: {'; '.join(p for p in problems if p)}; "
                           f"{_likely_cause(model, missing, unexpected + shaped)}")
    integer = [k for k in own if k in state and own[k].is_floating_point() and not state[k].is_floating_point()]
    if integer:
        raise RobenchError(
            f"checkpoint {spec.checkpoint} holds integer tensors where {arch} has float ones: "
            f"{_keys('integer', integer)}; loading would cast their values to float unscaled (a quantized "
            f"checkpoint?): dequantize it and save float weights"
        )


def _likely_cause(model: nn.Module, missing: list[str], other: list[str]) -> str:
    """What refused keys most likely mean: weights saved without their buffers, or another architecture."""
    buffers = {name for name, _ in model.named_buffers()}
    if missing and not other and all(k in buffers for k in missing):
        return ("only buffers are missing (e.g. BatchNorm running statistics), so the weights may be right but were "
                "saved without them (from named_parameters(), or a model built with track_running_stats=False); "
                "save model.state_dict() with its buffers")
    return "is it the right architecture?"
