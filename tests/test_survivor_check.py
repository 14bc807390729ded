"""The survivor check: full AutoAttack on a few survivors of a suite that takes shortcuts (issue 28)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from results_docs import invoke, one_error_line

from robench.attacks.suite import load_suite
from robench.errors import FieldError
from robench.run import evaluate, survivors
from robench.run.evaluate import EvalConfig, run_eval
from robench.run.runspec import RunSpec
from robench.run.survivors import SURVIVOR_CHECK
from robench.run.transfer import TransferConfig, TransferResult, run_transfer

# APGD-T on 1 target for 1 step: shortcuts() names the 8 targets it drops, so the check runs.
GREEDY = "cascade: true\nattacks:\n  - name: apgd_t\n    targets: 1\n    steps: 1\n"


def _suite(tmp_path: Path, eps: int) -> Path:
    path = tmp_path / f"greedy-{eps}.yaml"
    path.write_text(f"eps: [{eps}]\n{GREEDY}")
    assert load_suite(path).shortcuts()  # else the check would not run and the tests below could not fail
    return path


def _eval(suite: Path | str, k: int, limit: int = 12) -> evaluate.EvalResult:
    run = RunSpec(suite=load_suite(suite), limit=limit, threads=1, health_probes=False)
    result = run_eval(EvalConfig(("zoo:resnet-base",), run, survivor_check=k))
    assert result is not None
    return result


@pytest.fixture
def attacked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows the full AutoAttack was given, counted where the check hands them to the engine."""
    rows: list[int] = []
    real = survivors.views

    def counting(source, configs, batch_size, order=None):  # type: ignore[no-untyped-def]
        rows.extend(order.tolist())
        return real(source, configs, batch_size, order)

    monkeypatch.setattr(survivors, "views", counting)
    return rows


@pytest.mark.slow
def test_a_too_greedy_suite_raises_the_flag_and_records_it(tmp_path: Path) -> None:
    """resnet-base at eps 8: one APGD-T step leaves half of 12 digits right; the full AutoAttack fools them."""
    out = tmp_path / "r.json"
    result = invoke("eval", "-m", "zoo:resnet-base", "--attacks", _suite(tmp_path, 8), "--limit", "12",
                    "--threads", "1", "--no-health", "--survivor-check", "3", "-q", "--out", out)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    (checked,) = doc["survivor_check"]["checked"]
    assert (checked["model"], checked["eps"], checked["samples"]) == ("resnet-base", 8.0, 3)
    assert checked["fooled"]  # the full suite fools what one step on one target left
    (found,) = [f for f in doc["health"] if f["check"] == "cheaper_suite_missed"]
    assert (found["attack"], found["eps"]) == ("worst", 8.0)
    assert f"fooled {len(checked['fooled'])} of 3 samples" in found["message"]
    assert "overstated" in found["message"]
    assert found["docs"] == "docs/health.md#cheaper_suite_missed"
    assert "cheaper_suite_missed" in result.stderr  # the run's warning too


def test_a_suite_the_full_autoattack_cannot_beat_raises_nothing(tmp_path: Path, attacked: list[int]) -> None:
    """At eps 0 no attack can fool anything: the check runs on K survivors and finds none fooled."""
    result = _eval(_suite(tmp_path, 0), 4)
    assert result.meta["survivor_check"] == {"max_samples": 4, "suite": "autoattack", "checked": [
        {"model": "resnet-base", "eps": 0.0, "samples": 4, "fooled": []}]}
    assert not [f for f in result.health if f.check == "cheaper_suite_missed"]
    assert len(attacked) == 4


@pytest.mark.parametrize("k", [1, 5, 100])
def test_k_bounds_the_samples_the_full_autoattack_sees(tmp_path: Path, attacked: list[int], k: int) -> None:
    """The first min(K, survivors) survivors, in the run's order, and no other sample."""
    result = _eval(_suite(tmp_path, 0), k, limit=7)
    (checked,) = result.meta["survivor_check"]["checked"]
    assert checked["samples"] == min(k, 7)
    assert len(attacked) == min(k, 7)
    assert result.outcomes["resnet-base"].correct()[0].all()  # all 7 survive eps 0: the first K are rows 0..K-1
    assert attacked == list(range(min(k, 7)))


def test_zero_turns_the_check_off(tmp_path: Path, attacked: list[int]) -> None:
    result = _eval(_suite(tmp_path, 0), 0)
    assert result.meta["survivor_check"] is None
    assert attacked == []


def test_a_suite_without_shortcuts_is_not_checked(attacked: list[int]) -> None:
    assert not load_suite("quick").shortcuts()
    result = _eval("quick", 8, limit=4)
    assert result.meta["survivor_check"] is None
    assert attacked == []


@pytest.mark.parametrize("k", [-1, True, 2.0])
def test_a_bad_k_is_refused_by_the_config(k: object) -> None:
    with pytest.raises(FieldError, match="survivor_check"):
        EvalConfig(survivor_check=k)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", ["-1", "eight"])
def test_a_bad_k_exits_2_with_one_line_and_no_output(tmp_path: Path, k: str) -> None:
    out = tmp_path / "r.json"
    result = invoke("eval", "--attacks", "autoattack-malt", "--limit", "2", "--survivor-check", k, "--out", out)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "--survivor-check" in result.stderr
    assert "Traceback" not in result.stderr
    if k == "-1":
        one_error_line(result, 2, "--survivor-check", "[0, ", "0: off")
    assert not out.exists()


def test_the_clis_default_is_the_librarys() -> None:
    """The default is written twice (--help must not import torch): both say the same."""
    from robench.cli.eval_cmd import eval_command

    (option,) = [p for p in eval_command.params if p.name == "survivor_check"]
    assert option.default == evaluate.SURVIVOR_CHECK == EvalConfig().survivor_check == 8


# --- transfer-matrix: the same check on each source's white-box diagonal -------------------------------------------
def _transfer(suite: Path | str, k: int, sources: tuple[str, ...] | None = None,
              limit: int = 6) -> TransferResult:
    run = RunSpec(suite=load_suite(suite), limit=limit, threads=1, health_probes=False)
    result = run_transfer(TransferConfig(("zoo:resnet-base", "zoo:effnet-base"), sources, None, run,
                                         survivor_check=k))
    assert result is not None
    return result


def test_transfer_checks_each_sources_diagonal(tmp_path: Path, attacked: list[int]) -> None:
    """At eps 0 every sample survives: the first K rows of each source, re-attacked, none fooled."""
    result = _transfer(_suite(tmp_path, 0), 2)
    assert result.meta["survivor_check"] == {"max_samples": 2, "suite": "autoattack", "checked": [
        {"model": "resnet-base", "eps": 0.0, "samples": 2, "fooled": []},
        {"model": "effnet-base", "eps": 0.0, "samples": 2, "fooled": []}]}
    assert attacked == [0, 1, 0, 1]
    assert not [f for f in result.health if f.check == "cheaper_suite_missed"]


def test_transfer_checks_sources_only_and_zero_is_off(tmp_path: Path, attacked: list[int]) -> None:
    result = _transfer(_suite(tmp_path, 0), 3, sources=("effnet-base",))
    assert [c["model"] for c in result.meta["survivor_check"]["checked"]] == ["effnet-base"]
    assert attacked == [0, 1, 2]
    assert _transfer(_suite(tmp_path, 0), 0, sources=("effnet-base",)).meta["survivor_check"] is None
    assert _transfer("quick", 8, sources=("effnet-base",), limit=2).meta["survivor_check"] is None
    assert attacked == [0, 1, 2]


@pytest.mark.slow
def test_transfer_flags_a_too_greedy_suite_on_the_diagonal(tmp_path: Path) -> None:
    """As eval's: resnet-base at eps 8, one APGD-T step; the full AutoAttack fools what it left."""
    out = tmp_path / "t.json"
    result = invoke("transfer-matrix", "-m", "zoo:resnet-base", "-m", "zoo:effnet-base", "--sources", "resnet-base",
                    "--attacks", _suite(tmp_path, 8), "--limit", "12", "--threads", "1", "--no-health",
                    "--survivor-check", "3", "-q", "--out", out)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    (checked,) = doc["survivor_check"]["checked"]
    assert (checked["model"], checked["eps"], checked["samples"]) == ("resnet-base", 8.0, 3)
    assert checked["fooled"]
    (found,) = [f for f in doc["health"] if f["check"] == "cheaper_suite_missed"]
    assert (found["model"], found["attack"], found["eps"]) == ("resnet-base", "worst", 8.0)
    assert doc["config"]["survivor_check"] == 3


@pytest.mark.parametrize("k", [-1, True, 2.0])
def test_a_bad_k_is_refused_by_the_transfer_config(k: object) -> None:
    with pytest.raises(FieldError, match="survivor_check"):
        TransferConfig(("zoo:resnet-base",), survivor_check=k)  # type: ignore[arg-type]


def test_a_bad_k_exits_2_on_transfer_matrix_too(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    result = invoke("transfer-matrix", "-m", "zoo:resnet-base", "--attacks", "autoattack-malt", "--limit", "2",
                    "--survivor-check", "-1", "--out", out)
    one_error_line(result, 2, "--survivor-check", "[0, ", "0: off")
    assert not out.exists()


def test_one_option_for_both_commands() -> None:
    """Same name, type, metavar and default on eval and transfer-matrix, and the libraries' default."""
    from robench.cli.eval_cmd import eval_command
    from robench.cli.transfer_cmd import transfer_command

    (a,) = [p for p in eval_command.params if p.name == "survivor_check"]
    (b,) = [p for p in transfer_command.params if p.name == "survivor_check"]
    assert (a.opts, a.type, a.metavar, a.default) == (b.opts, b.type, b.metavar, b.default)
    assert b.default == TransferConfig(("zoo:resnet-base",)).survivor_check == SURVIVOR_CHECK
