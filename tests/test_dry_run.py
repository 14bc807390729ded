"""--dry-run: one batch timed per model and attack, passes per sample, an estimate for the run; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from test_gpu_path import CLOSE, SUITE

from robench.cli.main import main
from robench.run.dryrun import COLUMNS, dry_run
from robench.run.evaluate import EvalConfig, run_eval
from robench.run.runspec import RunSpec


@pytest.fixture(scope="module")
def close(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("close")
    (root / "close.py").write_text(CLOSE)
    return f"{root / 'close.py'}:Close"


@pytest.mark.slow
def test_rows_passes_and_estimate(close: str) -> None:
    """A clock read twice per timing: clean 2 s, each attack 6 s of which 2 s are its clean forward again."""
    ticks = iter([0.0, 2.0, 10.0, 16.0, 20.0, 26.0])
    cfg = EvalConfig((close,), RunSpec(suite=SUITE, limit=40, batch_size=8, health_probes=False))
    rows = dry_run(cfg, clock=lambda: next(ticks))
    assert list(rows.columns) == COLUMNS and rows.attrs["device"] == "cpu"
    assert rows[["model", "attack"]].values.tolist() == [["Close", "clean"], ["Close", "fgsm"], ["Close", "pgd"]]
    assert rows.seconds_per_sample.tolist() == pytest.approx([2 / 8, 4 / 8, 4 / 8])
    assert rows.estimated_seconds.tolist() == pytest.approx([2 / 8 * 40, 4 / 8 * 40, 4 / 8 * 40])
    full = run_eval(EvalConfig((close,), RunSpec(suite=SUITE, limit=40, batch_size=8, health_probes=False)))
    assert full is not None
    per_sample = {c["attack"]: (c["forward_passes"] + c["backward_passes"]) / 40 for c in full.meta["cost"]}
    assert rows.set_index("attack").passes_per_sample.drop("clean").to_dict() == per_sample
    assert per_sample["fgsm"] == 2  # one forward and one backward: hand-countable


def test_cli_prints_the_estimate_and_writes_nothing(close: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval", "-m", close, "--attack", "fgsm", "--limit", "16", "--dry-run",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "dry run on cpu" in result.stdout and "fgsm" in result.stdout and "estimate" in result.stdout
    assert not out.exists()


def test_dry_run_refuses_an_output_it_would_leave_standing(close: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("{}")
    result = CliRunner().invoke(main, ["eval", "-m", close, "--attack", "fgsm", "--dry-run", "-o", str(out)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"robench: error: --dry-run writes no results, but --out {out} exists and the real run would overwrite it; "
        f"move it away or leave out --out"]
    assert out.read_text() == "{}"
