"""The example store: a transfer run's adversarial examples kept on disk between runs (``ExampleCache``).

The engine reads and writes it through its ``ExampleStore`` protocol, so a rerun, a resumed run or one at
another batch size or world size crafts only the samples the store lacks. Examples are kept in shards:
one file per (source, attack, block of run positions, writing rank), so 50,000 ImageNet images make
hundreds of files per source and attack, not 50,000.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from robench.attacks.base import to_unit
from robench.attacks.suite import AttackSpec, Suite
from robench.core.files import atomic_write_text, read_text, remove_stale_temps
from robench.engine import Examples
from robench.errors import FieldError, RobenchError
from robench.models import LoadedModel

STORE_FORMAT = "shards-delta-int8-eps/127"  # in the cache key: files of another format are misses, never misread
STORE_VERSION = 2  # the store's layout, in its manifest: 1 was one file per sample (no manifest)
MANIFEST = "robench-store.json"
BLOCK = 1000  # run positions per shard, at most
SHARD_BYTES = 128 << 20  # and at most this many example bytes per shard: what a writer holds per (source, attack)
Entry = dict[str, Tensor]  # one sample's int8 steps, by eps name


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
    """Adversarial examples on disk, in shards of one (source, attack, block of run positions, rank).

    A sample's examples are its perturbation at each eps as int8 in steps of eps/127
    (``quantize``): C*H*W bytes per eps, 602 KB with 4 eps at ImageNet's 3x224x224, a quarter
    of float32. An example read back is the clean input plus that perturbation, within eps/254
    of the crafted one per pixel; ``save`` returns it and runs score it, so a run's numbers are
    the same whether its examples were crafted or read.

    A (source, attack) folder is keyed by what decides its examples (the source's identity,
    weights and input config, the attack spec, the seed, the data's class numbering,
    ``STORE_FORMAT`` and, in a targeted run, how the target classes were chosen). Inside it, a
    shard holds the samples of one block of run positions (``rows_per_block``) that one rank
    crafted, each under its key (id and content hash), so the store finds a sample by its key
    whatever the batch size, world size or resume; a sample elsewhere than its block now
    (another --limit) is crafted again. A rank writes only
    its own file of a block, so ranks never write one file; a block's examples are held until
    the rank moves past it, then merged with its file and written atomically. A shard is
    trusted only if it passes ``_problem``'s checks and its SHA-256; else its samples count
    as missing and ``report`` says so once.
    """

    def __init__(self, root: Path, models: list[LoadedModel], seed: int, classes: list[str], rank: int = 0,
                 world_size: int = 1, target_class: str | None = None) -> None:
        self.root, self.seed, self.classes, self.rank, self.world_size = root, seed, classes, rank, world_size
        self.target_class = target_class  # a targeted run's (RunSpec.target_class): in the key, as it decides examples
        self.models = {m.spec.label: m for m in models}
        self.bad: list[tuple[Path, str]] = []  # (file, what was wrong with it), in the order found
        self._swept: set[Path] = set()  # folders whose stale temporary files are gone
        self._read: OrderedDict[tuple[Path, int], dict[str, Entry]] = OrderedDict()  # the last blocks read
        self._pending: dict[tuple[Path, int], dict[str, Entry]] = {}  # crafted, not yet written
        self._bad_files: set[Path] = set()

    def folder(self, source: str, spec: AttackSpec) -> Path:
        """The folder of one source's examples under one attack."""
        m = self.models[source]
        aim = [] if self.target_class is None else [{"target_class": self.target_class}]  # untargeted keys as before
        key = json.dumps([*m.function(), spec.describe(), self.seed, self.classes, STORE_FORMAT, *aim], sort_keys=True)
        folder = self.root / hashlib.sha256(key.encode()).hexdigest()[:32]
        if folder not in self._swept:  # once per run: writers killed mid-write (SIGKILL) left these
            self._swept.add(folder)
            if folder.is_dir():
                remove_stale_temps(folder, ".*.tmp")
        return folder

    _folder = folder

    def load(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor,
             rows: Sequence[int]) -> list[Examples | None]:
        """Each sample's examples [(eps, x_adv [C, H, W])] on ``x`` (its clean input), or None where missing or bad."""
        folder, per = self.folder(source, spec), rows_per_block(tuple(x.shape[1:]), len(spec.eps))
        blocks = [r // per for r in rows]
        self._flush_before(folder, min(blocks, default=0))
        names = [_name(e) for e in spec.eps]
        found = []
        for key, block, x_i in zip(ids, blocks, x, strict=True):
            entry = self._pending.get((folder, block), {}).get(key)
            entry = entry if entry is not None else self._block(folder, block, per, names, tuple(x_i.shape)).get(key)
            found.append(None if entry is None else
                         [(e, dequantize(entry[_name(e)].to(x.device), x_i, e)) for e in spec.eps])
        return found

    def save(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor, examples: Examples,
             rows: Sequence[int]) -> Examples:
        """Keep each sample's perturbations until its block is done, then in its block's shard (atomically).

        Returns the examples as kept.
        """
        folder, per = self.folder(source, spec), rows_per_block(tuple(x.shape[1:]), len(spec.eps))
        kept = [(e, quantize(x_adv, x, e).cpu()) for e, x_adv in examples]
        for i, (key, row) in enumerate(zip(ids, rows, strict=True)):
            self._pending.setdefault((folder, row // per), {})[key] = {_name(e): q[i].clone() for e, q in kept}
        self._flush_before(folder, min((r // per for r in rows), default=0))
        return [(e, dequantize(q.to(x.device), x, e)) for e, q in kept]

    def flush(self) -> None:
        """Write every block still held (at the end of a run, or when it stops)."""
        for folder, block in sorted(self._pending, key=str):
            self._write(folder, block)

    def _flush_before(self, folder: Path, block: int) -> None:
        """Write this folder's held blocks below ``block``: positions come in order, so they are complete."""
        for f, b in [k for k in self._pending if k[0] == folder and k[1] < block]:
            self._write(f, b)

    def _write(self, folder: Path, block: int) -> None:
        """Merge a held block into this rank's shard of it and write that atomically."""
        from safetensors.torch import save_file

        from robench.core.files import atomic_write

        held = self._pending.pop((folder, block))
        path = shard_path(folder, block, self.rank)
        entries = {**self._shard(path, block, None, None), **held} if path.is_file() else held
        keys = sorted(entries)
        names = sorted(next(iter(entries.values())))
        tensors = {n: torch.stack([entries[k][n] for k in keys]).contiguous() for n in names}
        meta = {"version": str(STORE_VERSION), "block": str(block), "keys": json.dumps(keys),
                "sha256": shard_checksum(folder.name, block, keys, tensors)}
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, partial(save_file, tensors, metadata=meta))
        ours = [p for p in self._bad_files if p.parent == folder and p.name.startswith(f"b{block:06d}.")]
        for bad in [p for p in ours if _rank_of(p) >= self.world_size]:
            bad.unlink(missing_ok=True)  # no rank of this run writes it: its samples are in this run's shards now
        self._read.pop((folder, block), None)

    def _block(self, folder: Path, block: int, per: int, names: list[str], shape: tuple[int, ...]) -> dict[str, Entry]:
        """Every sample kept in one block's shards (all ranks' files); each folder's last two blocks read are held."""
        if (folder, block) not in self._read:
            entries: dict[str, Entry] = {}
            for path in sorted(folder.glob(f"b{block:06d}.r*.safetensors")):
                entries = {**self._shard(path, block, names, shape), **entries}
            self._read[(folder, block)] = entries
            held = [k for k in self._read if k[0] == folder]
            for k in held[:-2]:  # per (source, attack): the block now and the one before
                del self._read[k]
        return self._read[(folder, block)]

    def _shard(self, path: Path, block: int, names: list[str] | None,
               shape: tuple[int, ...] | None) -> dict[str, Entry]:
        """One shard's samples, or none (and the reason noted) when it is torn, altered or foreign."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no Mapping
            keys = json.loads(meta.get("keys", "null"))
        except Exception as e:  # noqa: BLE001 - a torn or foreign file is a miss, whatever the error
            return self._note_bad(path, f"unreadable: {type(e).__name__}")
        names = names if names is not None else sorted(tensors)
        problem = _problem(tensors, names, keys, shape, meta, block)
        if problem is None and meta.get("sha256") != shard_checksum(path.parent.name, block, keys, tensors):
            problem = "no checksum" if "sha256" not in meta else "checksum mismatch: altered or torn"
        if problem is not None:
            return self._note_bad(path, problem)
        return {k: {n: tensors[n][i] for n in names} for i, k in enumerate(keys)}

    def _note_bad(self, path: Path, why: str) -> dict[str, Entry]:
        if path not in self._bad_files:
            self._bad_files.add(path)
            self.bad.append((path, why))
        return {}

    def report(self, warn: Callable[[str], None] | None) -> None:
        """One warning for the run's bad shards, naming the first and counting them all."""
        if warn is None or not self.bad:
            return
        path, why = self.bad[0]
        if len(self.bad) == 1:
            warn(f"cache file {path} was bad ({why}); its examples were crafted again and written anew")
        else:
            warn(f"{len(self.bad)} cache files were bad, the first {path} ({why}); their examples were crafted "
                 "again and written anew")


def open_store(root: Path) -> None:
    """Check a store's layout version, writing the manifest of a new one; refuse another layout in one line.

    A store of robench's first layout (one file per sample, no manifest) is refused rather than
    read: its files would be crafted again beside it, and disk-space accounting would ignore them.
    """
    manifest = root / MANIFEST
    if manifest.is_file():
        try:
            version = json.loads(read_text(manifest, "example store manifest")).get("version")
        except (ValueError, AttributeError, RobenchError):
            raise FieldError("cache", f"{{name}} {root}: its {MANIFEST} is not a robench store manifest (unreadable "
                                      "or not JSON); give another folder or delete this one") from None
        if version != STORE_VERSION:
            raise FieldError("cache", f"{{name}} {root} is an example store of layout version {version!r}; this "
                             f"robench reads version {STORE_VERSION}: give another folder or delete this one")
        return
    if next(root.glob("*/??/*.safetensors"), None) is not None:
        raise FieldError("cache", f"{{name}} {root} holds examples in the one-file-per-sample layout of robench "
                         f"before store version {STORE_VERSION}, which is not read; delete it or give another folder")
    atomic_write_text(manifest, json.dumps({"store": "robench examples", "version": STORE_VERSION}) + "\n")


SHARD_HEADER = 512  # bytes: a shard's safetensors header without its keys (names, shapes, block, checksum)


def store_bytes(cache: ExampleCache | None, sources: list[LoadedModel], suite: Suite, keys_bytes: int,
                n: int) -> tuple[int, int, int]:
    """(bytes a full store of this run takes, bytes its folders hold already, bytes still to write at most).

    ``keys_bytes``: the samples' keys as a shard's header lists them (an upper bound). A (source,
    attack) folder holding at least its examples' data and headers counts as complete; the rest
    need their full size, less what they hold, plus the largest shard (rewritten beside its old self).
    Without a ``cache`` (a dry run with no store) nothing is held already.
    """
    full = stored = missing = largest = 0
    for m in sources:
        shape = (m.input.channels, *m.input.size)
        for spec in suite.attacks:
            per_sample = len(spec.eps) * int(torch.Size(shape).numel())
            per = rows_per_block(shape, len(spec.eps))
            data = n * per_sample + -(-n // per) * SHARD_HEADER
            full += data + keys_bytes
            largest = max(largest, min(n, per) * per_sample + SHARD_HEADER + keys_bytes)
            folder = None if cache is None else cache.folder(m.spec.label, spec)
            held = sum(p.stat().st_size for p in folder.glob("b*.r*.safetensors")) \
                if folder is not None and folder.is_dir() else 0
            stored += held
            missing += 0 if held >= data else data + keys_bytes - held
    return full, stored, missing + largest if missing else 0


def check_space(cache: ExampleCache, sources: list[LoadedModel], suite: Suite, ids: list[str],
                note: Callable[[str], None] | None) -> None:
    """Say what the store will take; refuse (FieldError) before any work when its disk has not that much free."""
    full, stored, need = store_bytes(cache, sources, suite, header_key_bytes(ids), len(ids))
    free = shutil.disk_usage(_existing(cache.root)).free
    if note is not None and not need:
        note(f"example store {cache.root}: {human_bytes(stored)} for {len(ids)} samples, all there already")
    elif note is not None:
        note(f"example store {cache.root}: {human_bytes(full)} for {len(ids)} samples, {human_bytes(stored)} already "
             f"there; up to {human_bytes(need)} more needed, {human_bytes(free)} free")
    if need > free:
        raise FieldError("cache", f"{{name}} {cache.root}: the example store needs up to {human_bytes(need)} more, "
                         f"its disk has {human_bytes(free)} free; free space, give a folder on another disk, or "
                         f"keep fewer examples (fewer samples, sources, attacks or eps)")


def header_key_bytes(ids: list[str]) -> int:
    """The samples' keys as shards' headers list them: "id#<64 hex>", quoted, comma (an upper bound)."""
    return sum(len(i.encode()) + 72 for i in ids)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent: a dry run measures the disk of a store it does not create."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_bytes(n: int) -> str:
    """Bytes in kB, MB, GB, TB (powers of 1000), three significant digits."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def rows_per_block(shape: tuple[int, ...], n_eps: int) -> int:
    """Run positions per shard: ``BLOCK``, fewer where their examples would pass ``SHARD_BYTES`` (large images)."""
    per_sample = max(1, n_eps * int(torch.Size(shape).numel()))
    return max(1, min(BLOCK, SHARD_BYTES // per_sample))


def shard_path(folder: Path, block: int, rank: int) -> Path:
    """The shard of one block that one rank writes."""
    return folder / f"b{block:06d}.r{rank}.safetensors"


def _rank_of(path: Path) -> int:
    return int(path.name.split(".")[1][1:])


def _name(eps: float) -> str:
    """The tensor name of one eps in a cache file."""
    return f"eps={eps!r}"


def shard_checksum(folder: str, block: int, keys: list[str], tensors: dict[str, Tensor]) -> str:
    """SHA-256 of a shard's key (its folder, block and sample keys) and of each tensor's name, dtype, shape and bytes.

    The key is inside, so a shard copied onto another block's or attack's path fails too.
    """
    h = hashlib.sha256(json.dumps([folder, block, keys]).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _problem(tensors: dict[str, Tensor], names: list[str], keys: object, shape: tuple[int, ...] | None,
             meta: dict[str, str], block: int) -> str | None:
    """What makes a shard unusable (version, block, keys, tensor names, dtype, shape, range), or None."""
    if meta.get("version") != str(STORE_VERSION) or meta.get("block") != str(block):
        return f"version {meta.get('version')} block {meta.get('block')}, not version {STORE_VERSION} block {block}"
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        return "its sample keys are not a list of distinct texts"
    if set(tensors) != set(names):
        return f"holds {sorted(tensors)}, not {names}"
    for name in names:
        q = tensors[name]
        if q.dtype != torch.int8:
            return f"{name} is {q.dtype}, not torch.int8"
        want = (len(keys), *(shape if shape is not None else q.shape[1:]))
        if tuple(q.shape) != want:
            return f"{name} has shape {tuple(q.shape)}, not {want}"
        if q.numel() and int(q.min()) < -127:
            return f"{name} holds {int(q.min())}, outside [-127, 127]"
    return None
