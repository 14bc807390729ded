"""The example store: a transfer run's adversarial examples kept on disk between runs (``ExampleCache``).

The engine reads and writes it through its ``ExampleStore`` protocol, so a rerun, a resumed run or one at
another batch size or world size crafts only the samples the store lacks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from robench.attacks.base import to_unit
from robench.attacks.suite import AttackSpec
from robench.core.files import remove_stale_temps
from robench.engine import Examples
from robench.models import LoadedModel

STORE_FORMAT = "delta-int8-eps/127"  # in the cache key: files of another format are misses, never misread


def quantize(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """The perturbation ``x_adv - x`` as int8 in steps of eps/127 (eps in 1/255 units).

    Steps scaled to eps keep ``||delta||_inf <= eps`` exact and a precision of eps/254 per
    pixel, finer than uint8 images (1/255) for every eps below 127, at a quarter of float32.
    """
    unit = to_unit(eps)
    if unit == 0:  # no perturbation to keep
        return torch.zeros_like(x, dtype=torch.int8)
    return ((x_adv - x) * (127 / unit)).round().clamp(-127, 127).to(torch.int8)


def dequantize(q: Tensor, x: Tensor, eps: float) -> Tensor:
    """The example ``quantize`` kept: within eps of ``x`` and in [0, 1], as the attack's was."""
    unit = to_unit(eps)
    return (x + (q.to(x.dtype) * (unit / 127)).clamp(-unit, unit)).clamp(0.0, 1.0)


class ExampleCache:
    """Adversarial examples on disk, one safetensors file per (source, attack, sample).

    A file holds the sample's perturbation at each eps as int8 in steps of eps/127
    (``quantize``): C*H*W bytes per eps plus a safetensors header (about 380 bytes for 4 eps,
    its checksum included), 3 KB per image at 32 px and 150 KB at ImageNet's 3x224x224, so
    50k ImageNet images take 7.5 GB per source, attack and eps, against 30 GB as float32. An
    example read back is the clean input plus that perturbation, within eps/254 of the crafted
    one per pixel; ``save`` returns it and runs score it, so a run's numbers are the same
    whether its examples were crafted or read.

    A sample's file is keyed by what decides its examples (the source's code (its identity),
    weights and input config, the attack spec, the seed, the data's class numbering (it decides the labels an
    attack uses) and the sample's key: its id and content hash, so an image altered under the
    same name is a miss, never another image's example) and by ``STORE_FORMAT``, never by batch size, batch index
    or torchrun rank, so a rerun at any batch size or world size, or a resumed one, crafts only
    the samples it lacks. A file is trusted only if it passes ``_problem``'s checks (exactly
    the eps keys, int8, the input's shape, |q| <= 127, and a SHA-256 over the key and bytes);
    else it counts as missing: it is crafted again and rewritten, and ``report`` says so once.
    """

    def __init__(self, root: Path, models: list[LoadedModel], seed: int, classes: list[str]) -> None:
        self.root, self.seed, self.classes = root, seed, classes
        self.models = {m.spec.label: m for m in models}
        self.bad: list[tuple[Path, str]] = []  # (file, what was wrong with it), in the order found
        self._swept: set[Path] = set()  # folders whose stale temporary files are gone

    def _folder(self, source: str, spec: AttackSpec) -> Path:
        m = self.models[source]
        key = json.dumps([*m.function(), spec.describe(), self.seed, self.classes, STORE_FORMAT], sort_keys=True)
        folder = self.root / hashlib.sha256(key.encode()).hexdigest()[:32]
        if folder not in self._swept:  # once per run: writers killed mid-write (SIGKILL) left these
            self._swept.add(folder)
            if folder.is_dir():
                remove_stale_temps(folder, "*/.*.tmp")
        return folder

    @staticmethod
    def _file(folder: Path, sample_id: str) -> Path:
        name = hashlib.sha256(sample_id.encode()).hexdigest()
        return folder / name[:2] / f"{name}.safetensors"

    def load(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor) -> list[Examples | None]:
        """Each sample's examples [(eps, x_adv [C, H, W])] on ``x`` (its clean input), or None where missing or bad."""
        folder = self._folder(source, spec)
        return [self._read(folder, i, spec, x_i) for i, x_i in zip(ids, x, strict=True)]

    def _read(self, folder: Path, sample_id: str, spec: AttackSpec, x: Tensor) -> Examples | None:
        from safetensors import safe_open

        path = self._file(folder, sample_id)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                names, stored = list(f.keys()), (f.metadata() or {}).get("sha256")
                tensors = {k: f.get_tensor(k) for k in names}
        except Exception as e:  # noqa: BLE001 - a torn or foreign file is a miss, whatever the error
            self.bad.append((path, f"unreadable: {type(e).__name__}"))
            return None
        problem = _problem(tensors, [_name(e) for e in spec.eps], tuple(x.shape))
        if problem is None and stored != checksum(folder.name, sample_id, tensors):
            problem = "no checksum" if stored is None else "checksum mismatch: altered or torn"
        if problem is not None:
            self.bad.append((path, problem))
            return None
        return [(e, dequantize(tensors[_name(e)].to(x.device), x, e)) for e in spec.eps]

    def save(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor, examples: Examples) -> Examples:
        """Keep each sample's perturbations and their checksum, one file per sample (written atomically).

        Returns the examples as kept.
        """
        from safetensors.torch import save_file

        from robench.core.files import atomic_write

        folder = self._folder(source, spec)
        kept = [(e, quantize(x_adv, x, e)) for e, x_adv in examples]
        for row, sample_id in enumerate(ids):
            path = self._file(folder, sample_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {_name(e): q[row].cpu().contiguous() for e, q in kept}
            meta = {"sha256": checksum(folder.name, sample_id, tensors)}
            atomic_write(path, partial(save_file, tensors, metadata=meta))
        return [(e, dequantize(q, x, e)) for e, q in kept]

    def report(self, warn: Callable[[str], None] | None) -> None:
        """One warning for the run's bad files, naming the first and counting them all."""
        if warn is None or not self.bad:
            return
        path, why = self.bad[0]
        if len(self.bad) == 1:
            warn(f"cache file {path} was bad ({why}); its examples were crafted again and the file rewritten")
        else:
            warn(f"{len(self.bad)} cache files were bad, the first {path} ({why}); their examples were crafted "
                 "again and the files rewritten")


def _name(eps: float) -> str:
    """The tensor name of one eps in a cache file."""
    return f"eps={eps!r}"


def checksum(folder: str, sample_id: str, tensors: dict[str, Tensor]) -> str:
    """SHA-256 of a cache file's key (its folder and sample id) and of each tensor's name, dtype, shape and bytes.

    The key is inside, so a file copied onto another sample's or attack's path fails too.
    """
    h = hashlib.sha256(json.dumps([folder, sample_id]).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _problem(tensors: dict[str, Tensor], names: list[str], shape: tuple[int, ...]) -> str | None:
    """What makes a cache file's tensors unusable (keys, dtype, shape, range), or None."""
    if set(tensors) != set(names):
        return f"holds {sorted(tensors)}, not {names}"
    for name in names:
        q = tensors[name]
        if q.dtype != torch.int8:
            return f"{name} is {q.dtype}, not torch.int8"
        if tuple(q.shape) != shape:
            return f"{name} has shape {tuple(q.shape)}, not {shape}"
        if int(q.min()) < -127:
            return f"{name} holds {int(q.min())}, outside [-127, 127]"
    return None
