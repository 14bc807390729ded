"""transfer-matrix --dry-run: one batch timed per source and attack, passes per sample, the store's bytes."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_gpu_path import CLOSE, SUITE

from robench.cli.main import main
from robench.errors import FieldError
from robench.run import store
from robench.run.dryrun import COLUMNS, dry_run_transfer
from robench.run.runspec import RunSpec
from robench.run.transfer import TransferConfig, run_transfer

Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("close")
    (root / "close.py").write_text(CLOSE)
    return f"a={root / 'close.py'}:Close", f"b={root / 'close.py'}:Close"


def _cfg(pair: tuple[str, str], cache: Path | None = None) -> TransferConfig:
    return TransferConfig(pair, run=RunSpec(suite=SUITE, limit=16, batch_size=8, health_probes=False), cache=cache)


@pytest.mark.slow
def test_rows_passes_and_estimate(pair: tuple[str, str]) -> None:
    """Clock read twice per timing: each clean forward 1 s; a's fgsm 4 s and pgd 8 s, b's 4 s and 12 s, each
    holding both models' clean forwards again (2 s)."""
    ticks = iter([0.0, 1.0, 1.0, 2.0, 10.0, 14.0, 20.0, 28.0, 30.0, 34.0, 40.0, 52.0])
    rows = dry_run_transfer(_cfg(pair), clock=lambda: next(ticks))
    assert list(rows.columns) == COLUMNS and rows.attrs["device"] == "cpu"
    assert rows[["model", "attack"]].values.tolist() == [["a", "clean"], ["b", "clean"], ["a", "fgsm"], ["a", "pgd"],
                                                         ["b", "fgsm"], ["b", "pgd"]]
    assert rows.seconds_per_sample.tolist() == pytest.approx([1 / 8, 1 / 8, 2 / 8, 6 / 8, 2 / 8, 10 / 8])
    assert rows.estimated_seconds.tolist() == pytest.approx([2, 2, 4, 12, 4, 20])  # x 16 samples
    full = run_transfer(_cfg(pair))
    assert full is not None
    per_sample = {(c["model"], c["attack"]): (c["forward_passes"] + c["backward_passes"]) / 16
                  for c in full.outcomes.costs()}
    attacks = rows[rows.attack != "clean"]
    assert dict(zip(zip(attacks.model, attacks.attack, strict=True), attacks.passes_per_sample, strict=True)) \
        == per_sample
    assert per_sample[("a", "fgsm")] == 2  # one forward and one backward: hand-countable


def _store_bytes(n_ids_bytes: int) -> int:
    """2 sources x 2 attacks x (16 samples x 1 eps x 1*8*8 int8 (digits) + one shard header), plus the keys."""
    return 2 * 2 * (16 * 1 * 8 * 8 + store.SHARD_HEADER + n_ids_bytes)


def test_without_a_cache_it_says_what_a_store_would_take(pair: tuple[str, str]) -> None:
    rows = dry_run_transfer(_cfg(pair))
    keys = store.header_key_bytes(run_transfer_ids(pair))
    assert rows.attrs["store"] == ("no example store (cache not set); one for this run would take "
                                   f"{store.human_bytes(_store_bytes(keys))}")
    assert keys == sum(len(i) + 72 for i in run_transfer_ids(pair))  # "digits:90#<64 hex>", quoted, comma
    assert store.human_bytes(_store_bytes(keys)) == "11.4 kB"  # 4 x (1,024 + 512 + 1,270 to 1,290) bytes


def test_an_ensemble_source_is_timed_at_its_members_passes(pair: tuple[str, str]) -> None:
    """With source a and the ensemble a+b: the ensemble's rows, one fgsm step costing both members' passes, and a
    store of two sources' examples (as large as the pair's)."""
    import dataclasses

    rows = dry_run_transfer(dataclasses.replace(_cfg(pair), sources=("a",), ensembles=(("a", "b"),)))
    assert rows[["model", "attack", "passes_per_sample"]].values.tolist() == [  # fgsm: a forward, a backward per member
        ["a", "clean", 1], ["b", "clean", 1], ["a", "fgsm", 2], ["a", "pgd", 4],
        ["a+b", "clean", 1], ["a+b", "fgsm", 4], ["a+b", "pgd", 8]]
    keys = store.header_key_bytes(run_transfer_ids(pair))
    assert rows.attrs["store"].endswith(f"would take {store.human_bytes(_store_bytes(keys))}")


def run_transfer_ids(pair: tuple[str, str]) -> list[str]:
    from robench.core.distributed import LOCAL
    from robench.run.runspec import open_run

    return open_run(_cfg(pair).run, pair, LOCAL).source.ids


def test_with_a_cache_it_says_the_run_s_line_and_creates_nothing(pair: tuple[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "store" / "cache"
    rows = dry_run_transfer(_cfg(pair, cache))
    assert rows.attrs["store"].startswith(f"example store {cache}: 11.4 kB for 16 samples, 0 bytes already there")
    assert not (tmp_path / "store").exists()


def test_a_disk_without_the_store_is_refused_before_timing(pair: tuple[str, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 10**12, 1000))
    with pytest.raises(FieldError, match="needs up to .* more, its disk has 1 kB free"):
        dry_run_transfer(_cfg(pair, tmp_path / "cache"), clock=lambda: pytest.fail("timed before the refusal"))
    result = CliRunner().invoke(main, ["transfer-matrix", *pair, "--attack", "fgsm", "--limit", "4", "--dry-run",
                                       "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert [x for x in lines if "error" in x] == lines[-1:] and "Traceback" not in result.stderr
    assert lines[-1].startswith("robench: error: --cache ") and "1 kB free" in lines[-1]


def test_cli_prints_the_estimate_and_the_store_and_writes_nothing(pair: tuple[str, str], tmp_path: Path) -> None:
    out, plot = tmp_path / "t.json", tmp_path / "t.png"
    result = CliRunner().invoke(main, ["transfer-matrix", *pair, "--attack", "fgsm", "--limit", "16", "--dry-run",
                                       "-o", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.stderr
    assert "dry run on cpu" in result.stdout and "fgsm" in result.stdout and "all" in result.stdout
    # 2 sources x 1 attack x (16 samples x 4 eps (the default) x 64 bytes + a header + about 1,280 key bytes)
    assert "no example store (cache not set); one for this run would take 11.9 kB" in result.stdout
    assert not out.exists() and not plot.exists()


@pytest.mark.parametrize("option", ["-o", "--plot"])
def test_dry_run_refuses_an_output_it_would_leave_standing(pair: tuple[str, str], tmp_path: Path,
                                                           option: str) -> None:
    path = tmp_path / ("t.json" if option == "-o" else "t.png")
    path.write_text("{}")
    result = CliRunner().invoke(main, ["transfer-matrix", *pair, "--attack", "fgsm", "--dry-run", option, str(path)])
    assert result.exit_code == 2 and result.stdout == ""
    name = "--out" if option == "-o" else "--plot"
    assert result.stderr.strip().splitlines() == [
        f"robench: error: --dry-run writes no results, but {name} {path} exists and the real run would overwrite "
        f"it; move it away or leave out {name}"]
    assert path.read_text() == "{}"


def test_amp_with_a_cache_is_refused_as_the_real_run_refuses_it(pair: tuple[str, str], tmp_path: Path) -> None:
    run = RunSpec(suite=SUITE, limit=4, health_probes=False, amp="bf16")
    with pytest.raises(FieldError, match="cannot be combined with"):
        dry_run_transfer(TransferConfig(pair, run=run, cache=tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()
