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
