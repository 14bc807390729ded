"""--dry-run: one batch timed per model and attack, passes per sample, an estimate for the run; nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_gpu_path import CLOSE, SUITE

from robench.attacks.suite import load_suite
from robench.cli.main import main
from robench.run.dryrun import COLUMNS, SURVIVOR_ROW, dry_run, dry_run_transfer
from robench.run.evaluate import EvalConfig, run_eval
from robench.run.runspec import RunSpec
from robench.run.survivors import planned_passes
from robench.run.transfer import TransferConfig


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


# --- the survivor check's row (issue 28) ---------------------------------------------------------------------------
# APGD-T on 1 of AutoAttack's 9 targets for 1 step, in cascade: shortcuts() names the dropped targets, so eval would
# re-attack survivors of its worst rows at eps 0 and 8 with the full autoattack suite.
GREEDY = "eps: [0, 8]\ncascade: {cascade}\nattacks:\n  - name: apgd_t\n    targets: 1\n    steps: 1\n"
# autoattack at eps 8 on 10 classes, per sample (robench/attacks/budget.py): APGD-CE 1 x (2 x 100 + 1) = 201,
# APGD-T 9 targets x 201 = 1,809, FAB-T 9 x 100 steps x (2 + 1) = 2,700, Square 5,000 queries: 9,710; at eps 0
# nothing. Each eps adds its clean forward: (1 + 0) + (1 + 9,710).
CHECK_PASSES = 9712


def _greedy(tmp_path: Path, cascade: bool = True) -> RunSpec:
    path = tmp_path / f"greedy-{cascade}.yaml"
    path.write_text(GREEDY.format(cascade=str(cascade).lower()))
    return RunSpec(suite=load_suite(path), limit=40, batch_size=8, health_probes=False)


def _ticks() -> Callable[[], float]:
    """Clean 2 s, the attack 6 s (2 s of it its clean forward again): 0.25 and 0.5 s per sample of 8."""
    ticks = iter([0.0, 2.0, 10.0, 16.0])
    return lambda: next(ticks)


@pytest.mark.parametrize(("k", "samples"), [(3, 3), (100, 40)])
def test_the_survivor_check_gets_its_own_row_in_the_total(close: str, tmp_path: Path, k: int, samples: int) -> None:
    """N (at most every sample) x AutoAttack's planned passes at each worst row's eps, at the model's s/pass."""
    rows = dry_run(EvalConfig((close,), _greedy(tmp_path), survivor_check=k), clock=_ticks())
    assert rows[["model", "attack"]].values.tolist() == [["Close", "clean"], ["Close", "apgd_t"],
                                                         ["Close", SURVIVOR_ROW]]
    assert "upper bound" in SURVIVOR_ROW
    check = rows.iloc[2]
    assert (check.passes_per_sample, check.samples) == (CHECK_PASSES, samples)
    per_pass = (0.25 + 0.5) / (1 + rows.iloc[1].passes_per_sample)  # the clean forward and the attack's passes
    assert check.seconds_per_sample == pytest.approx(per_pass * CHECK_PASSES)
    assert check.estimated_seconds == pytest.approx(per_pass * CHECK_PASSES * samples)
    assert rows.estimated_seconds.sum() == pytest.approx(0.25 * 40 + 0.5 * 40 + per_pass * CHECK_PASSES * samples)
    assert rows.attrs["device"] == "cpu"


@pytest.mark.parametrize("why", ["off", "no worst rows", "not a cascade", "no shortcuts"])
def test_no_survivor_row_where_the_check_would_not_run(close: str, tmp_path: Path, why: str) -> None:
    run = _greedy(tmp_path, cascade=why != "not a cascade")
    if why == "no shortcuts":
        run = RunSpec(suite=load_suite("quick"), limit=40, batch_size=8, health_probes=False)
        assert not run.suite.shortcuts()
    cfg = EvalConfig((close,), run, survivor_check=0 if why == "off" else 8, worst=why != "no worst rows")
    rows = dry_run(cfg, clock=iter(float(t) for t in range(100)).__next__)
    assert SURVIVOR_ROW not in rows.attack.tolist()
    assert planned_passes(run.suite, cfg.survivor_check if cfg.worst else 0, 10) == 0


def test_cli_prints_the_survivor_row_as_an_upper_bound(close: str, tmp_path: Path) -> None:
    suite = tmp_path / "greedy.yaml"
    suite.write_text(GREEDY.format(cascade="true"))
    result = CliRunner().invoke(main, ["eval", "-m", close, "--attacks", str(suite), "--limit", "16",
                                       "--survivor-check", "2", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert "survivor check (upper" in result.stdout and f"{CHECK_PASSES}" in result.stdout


def test_transfer_dry_run_counts_the_check_per_source(close: str, tmp_path: Path) -> None:
    """One model: its own source and target; the check's row is the source's, as in eval."""
    cfg = TransferConfig((close,), run=_greedy(tmp_path), survivor_check=5)
    rows = dry_run_transfer(cfg, clock=_ticks())
    assert rows[["model", "attack"]].values.tolist() == [["Close", "clean"], ["Close", "apgd_t"],
                                                         ["Close", SURVIVOR_ROW]]
    assert (rows.iloc[2].passes_per_sample, rows.iloc[2].samples) == (CHECK_PASSES, 5)
    assert rows.estimated_seconds.sum() == pytest.approx(0.25 * 40 + 0.5 * 40 + rows.iloc[2].estimated_seconds)
    assert "store" in rows.attrs
    off = dry_run_transfer(TransferConfig((close,), run=_greedy(tmp_path), survivor_check=0), clock=_ticks())
    assert SURVIVOR_ROW not in off.attack.tolist()
