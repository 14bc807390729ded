"""The example store in shards: keys per sample, one file per (source, attack, block, rank), space, old layouts."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from robench.attacks.suite import parse_suite
from robench.cli.main import main
from robench.data import InputConfig
from robench.errors import FieldError
from robench.run import store
from robench.run.runspec import RunSpec
from robench.run.store import ExampleCache, open_store
from robench.run.transfer import TransferConfig, run_transfer

SUITE = parse_suite("eps: [4, 8]\nattacks:\n  - name: fgsm\n  - name: pgd\n    steps: 2\n")
CHEAP = parse_suite("eps: [8]\nattacks:\n  - name: fgsm\n  - name: pgd\n    steps: 2\n")
PAIR = ("zoo:effnet-base", "zoo:resnet-base")
N = 36


def _model(label: str) -> Any:
    """What the store needs of a loaded model: its label, its function's identity and its input config."""
    return SimpleNamespace(spec=SimpleNamespace(label=label), function=lambda: ["arch", label],
                           input=InputConfig(channels=3, size=(8, 8)))


MODELS = [_model("a"), _model("b")]
X = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(0))
KEYS = [f"img{i:03d}#{i:064x}" for i in range(N)]


def _crafted(rows: list[int], spec_index: int) -> list[tuple[float, torch.Tensor]]:
    """Examples that depend on the sample alone (as the attacks' do), within eps of X."""
    g = torch.Generator().manual_seed(1000 * spec_index)
    noise = torch.rand(N, 3, 8, 8, generator=g) * 2 - 1
    return [(e, (X[rows] + noise[rows] * e / 255).clamp(0, 1)) for e in SUITE.attacks[spec_index].eps]


def _fill(root: Path, batch: int, rank: int = 0, world: int = 1) -> dict[tuple[str, int, int], torch.Tensor]:
    """One rank's run over its strided positions, ``batch`` at a time: load, craft the misses, save; what it scored."""
    cache = ExampleCache(root, MODELS, 0, ["c0", "c1"], rank, world)  # type: ignore[arg-type]
    scored = {}
    mine = list(range(rank, N, world))
    for start in range(0, len(mine), batch):
        rows = mine[start:start + batch]
        for m in MODELS:
            for k, spec in enumerate(SUITE.attacks):
                kept = cache.load(m.spec.label, spec, [KEYS[r] for r in rows], X[rows], rows)
                missing = [r for r, got in zip(rows, kept, strict=True) if got is None]
                made = cache.save(m.spec.label, spec, [KEYS[r] for r in missing], X[missing], _crafted(missing, k),
                                  missing) if missing else []
                for j, e in enumerate(spec.eps):
                    for i, r in enumerate(rows):
                        got = kept[i]
                        scored[(m.spec.label, k, r, e)] = (got[j][1] if got is not None
                                                           else made[j][1][missing.index(r)])
    cache.flush()
    cache.report(pytest.fail)
    return scored


def _shards(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def test_shards_at_any_batch_size_and_world_size_give_the_same_examples(tmp_path: Path) -> None:
    one = _fill(tmp_path / "one", 5)
    assert len(_shards(tmp_path / "one")) == 2 * 2  # sources x attacks x blocks (36 samples: one block)
    for r in range(N):  # what was scored is what a later run reads back
        for e in (4.0, 8.0):
            assert (one[("a", 0, r, e)] - X[r]).abs().max() <= e / 255 + 1e-6
    two = tmp_path / "two"
    by_rank = {**_fill(two, 7, 0, 2), **_fill(two, 3, 1, 2)}  # torchrun with 2 ranks: a file per rank and block
    assert {p.name for p in _shards(two)} == {"b000000.r0.safetensors", "b000000.r1.safetensors"}
    assert len(_shards(two)) == 2 * 2 * 2
    again = _fill(two, 11)  # read back by one process at another batch size: all there, nothing written
    assert len(_shards(two)) == 2 * 2 * 2
    for key, example in one.items():
        assert torch.equal(by_rank[key], example) and torch.equal(again[key], example)


def test_blocks_are_written_as_the_run_passes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 10 positions a block, 36 samples make 4 shards per (source, attack); at most 2 blocks are held."""
    monkeypatch.setattr(store, "BLOCK", 10)
    held: list[int] = []
    write = ExampleCache._write

    def counting(self: ExampleCache, folder: Path, block: int) -> None:
        held.append(len(self._pending))
        write(self, folder, block)

    monkeypatch.setattr(ExampleCache, "_write", counting)
    first = _fill(tmp_path, 4)
    assert len(_shards(tmp_path)) == 2 * 2 * 4
    assert len(held) == 2 * 2 * 4 and max(held) <= 2 * 2 * 2  # per (source, attack): the block now, the one before
    again = _fill(tmp_path, 6)
    assert all(torch.equal(again[k], v) for k, v in first.items())


def test_each_shard_is_read_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources and attacks interleave per batch; each keeps its own blocks read, so none is read again."""
    monkeypatch.setattr(store, "BLOCK", 10)
    _fill(tmp_path, 4)
    read: list[Path] = []
    shard = ExampleCache._shard

    def counting(self: ExampleCache, path: Path, *args: Any) -> Any:
        read.append(path)
        return shard(self, path, *args)

    monkeypatch.setattr(ExampleCache, "_shard", counting)
    _fill(tmp_path, 4)
    assert sorted(read) == _shards(tmp_path)


def test_a_corrupt_shard_is_crafted_again_with_one_warning(tmp_path: Path) -> None:
    first = _fill(tmp_path, 9)
    broken = _shards(tmp_path)[1]
    broken.write_bytes(broken.read_bytes()[:-50])  # torn
    cache = ExampleCache(tmp_path, MODELS, 0, ["c0", "c1"])  # type: ignore[arg-type]
    folders = {cache.folder(m.spec.label, spec): (m.spec.label, spec) for m in MODELS for spec in SUITE.attacks}
    label, spec = folders[broken.parent]
    rows = list(range(N))
    assert cache.load(label, spec, KEYS, X, rows) == [None] * N
    said: list[str] = []
    cache.report(said.append)
    assert said == [f"cache file {broken} was bad (unreadable: SafetensorError); its examples were crafted again "
                    "and written anew"]
    k = SUITE.attacks.index(spec)
    cache.save(label, spec, KEYS, X, _crafted(rows, k), rows)
    cache.flush()
    again = _fill(tmp_path, 9)  # the shard was written anew: trusted, and the same examples
    assert all(torch.equal(again[key], v) for key, v in first.items())


def test_a_bad_shard_of_a_rank_no_longer_running_is_replaced(tmp_path: Path) -> None:
    """Rank 1's torn shard, read by a one-process run: crafted again into rank 0's shard, the torn one removed."""
    _fill(tmp_path, 6, 0, 2)
    _fill(tmp_path, 6, 1, 2)
    torn = [p for p in _shards(tmp_path) if p.name.endswith(".r1.safetensors")][0]
    torn.write_bytes(b"")
    said: list[str] = []
    cache = ExampleCache(tmp_path, MODELS, 0, ["c0", "c1"])  # type: ignore[arg-type]
    for m in MODELS:
        for k, spec in enumerate(SUITE.attacks):
            rows = list(range(N))
            kept = cache.load(m.spec.label, spec, KEYS, X, rows)
            missing = [r for r in rows if kept[r] is None]
            assert len(missing) == (N // 2 if torn.parent == cache.folder(m.spec.label, spec) else 0)
            if missing:
                cache.save(m.spec.label, spec, [KEYS[r] for r in missing], X[missing], _crafted(missing, k), missing)
    cache.flush()
    cache.report(said.append)
    assert len(said) == 1 and not torn.exists()
    _fill(tmp_path, 36)  # now whole: report(pytest.fail) stays silent


def test_old_one_file_per_sample_stores_are_refused_in_one_line(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / ("ab" * 16) / "cd").mkdir(parents=True)
    (old / ("ab" * 16) / "cd" / f"cd{'0' * 62}.safetensors").write_bytes(b"x")
    with pytest.raises(FieldError, match="one-file-per-sample layout"):
        open_store(old)
    result = CliRunner().invoke(main, ["transfer-matrix", *PAIR, "--limit", "4", "--cache", str(old),
                                       "--out", str(tmp_path / "t.json")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--cache" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "t.json").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / store.MANIFEST).write_text('{"store": "robench examples", "version": 3}\n')
    with pytest.raises(FieldError, match="layout version 3; this robench reads version 2"):
        open_store(other)
    (other / store.MANIFEST).write_bytes(b"\x8b\x00garbage")
    with pytest.raises(FieldError, match=r"its robench-store.json is not a robench store manifest \(unreadable"):
        open_store(other)
    a_file = tmp_path / "t.json"
    a_file.write_text("{}")
    result = CliRunner().invoke(main, ["transfer-matrix", *PAIR, "--cache", str(a_file)])
    assert result.exit_code == 2 and result.stderr == (f"robench: error: --cache {a_file} is a file, not a folder; "
                                                       "give a folder for the example store\n")
    new = tmp_path / "new"
    new.mkdir()
    open_store(new)
    open_store(new)  # its own manifest: accepted
    assert (new / store.MANIFEST).is_file()


Usage = namedtuple("Usage", "total used free")


@pytest.mark.slow
def test_the_store_s_bytes_are_said_and_a_disk_without_them_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, cache = RunSpec(suite=CHEAP, limit=6, batch_size=6), tmp_path / "cache"
    full = 2 * 2 * (6 * 3 * 32 * 32 + store.SHARD_HEADER)  # sources x attacks x (samples x bytes + a header)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 0, full))  # less than full + the keys
    notes: list[str] = []
    with pytest.raises(FieldError, match="the example store needs up to .* more, its disk has 75.8 kB free"):
        run_transfer(TransferConfig(PAIR, run=run, cache=cache), note=notes.append)
    assert notes[0].startswith(f"example store {cache}: ") and "0 bytes already there" in notes[0]
    assert not _shards(cache)  # refused before any work
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 0, 10**9))
    done = run_transfer(TransferConfig(PAIR, run=run, cache=cache), note=notes.append)
    on_disk = sum(p.stat().st_size for p in _shards(cache))
    assert full < on_disk < full + 2 * 2 * 6 * 100  # the estimate's data and headers, plus the keys
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 0, full))  # all there now: needs little
    again = run_transfer(TransferConfig(PAIR, run=run, cache=cache), note=notes.append)
    assert again.outcomes.crafted == 0 and again.rows.equals(done.rows)
    assert notes[-1] == f"example store {cache}: {store.human_bytes(on_disk)} for 6 samples, all there already"


def test_the_cli_refuses_a_full_disk_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 10**12, 1000))
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["transfer-matrix", *PAIR, "--limit", "4", "--eps", "8",
                                       "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"robench: example store {tmp_path / 'cache'}: ")  # said before the refusal
    assert len(lines) == 2 and "--cache" in lines[1] and "1 kB free" in lines[1]
    assert not out.exists()
