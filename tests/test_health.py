"""Health checks: each result check fires on a hand-built case and stays silent on noise, the zoo is
silent, every check is documented, and flags reach the CLI, the results file, leak-check and the gate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robench.analysis import health, probes
from robench.attacks.suite import CLEAN, AttackSpec, Suite, build_config, load_suite, override
from robench.cli.main import main
from robench.engine import NONFINITE, Outcomes
from robench.errors import FieldError
from robench.run import evaluate, leak
from robench.run.runspec import RunSpec
from robench.run.transfer import TransferConfig, run_transfer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
ZOO_PAIR = ("zoo:effnet-base", "zoo:resnet-stepll")  # two architectures, plain and adversarially trained


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- result checks ---------------------------------------------------------------------------------

N = 1000


def rows(series: dict[tuple[str, float], float], model: str = "m", n: int = N) -> pd.DataFrame:
    return pd.DataFrame([{"model": model, "attack": a, "eps": e, "top1": t, "n": n} for (a, e), t in series.items()])


def right(k: int, n: int = N) -> np.ndarray:
    """Correctness of n samples: the first k right."""
    return np.arange(n) < k


@pytest.mark.parametrize(("fgsm4", "flagged"), [(0.600, True), (0.301, False)])
def test_accuracy_rises_with_eps(fgsm4: float, flagged: bool) -> None:
    table = rows({(CLEAN, 0.0): 0.9, ("fgsm", 2.0): 0.3, ("fgsm", 4.0): fgsm4, ("fgsm", 8.0): 0.1})
    correct = {("m", CLEAN, 0.0): right(900), ("m", "fgsm", 2.0): right(300),
               ("m", "fgsm", 4.0): right(round(fgsm4 * N)), ("m", "fgsm", 8.0): right(100)}
    paired, unpaired = health.accuracy_rises(table, correct), health.accuracy_rises(table)  # McNemar; Fisher
    for flags in (paired, unpaired):
        assert [(f.check, f.model, f.attack, f.eps) for f in flags] == (
            [("accuracy_rises_with_eps", "m", "fgsm", 4.0)] if flagged else [])
    if flagged:
        assert "rises from 0.300 (eps 2) to 0.600 at eps 4 (300 samples better, 0 worse; p = " in paired[0].message
        assert "(600 vs 300 of 1000, unpaired; p = " in unpaired[0].message


def test_accuracy_above_clean_is_a_rise_from_eps_0() -> None:
    table = rows({(CLEAN, 0.0): 0.5, ("fgsm", 8.0): 0.7})  # the label-leaking signature
    (f,) = health.accuracy_rises(table)
    assert f.eps == 8.0 and "rises from 0.500 (clean) to 0.700 at eps 8" in f.message and "unpaired" in f.message


def test_one_flag_per_model_and_attack_and_holm_over_the_run() -> None:
    table = rows({(CLEAN, 0.0): 0.9, ("fgsm", 2.0): 0.1, ("fgsm", 4.0): 0.5, ("fgsm", 8.0): 0.6})
    (f,) = health.accuracy_rises(table)  # eps 2 -> 4, 2 -> 8, 4 -> 8 all rise: one flag, the strongest
    assert f.eps == 8.0 and "from 0.100 (eps 2)" in f.message
    flag = health.flag("zero_gradients", "m", "x")
    one = [health._Candidate(0.03, ("a",), flag)]
    assert health.significant(one) == [flag]
    assert health.significant(one + [health._Candidate(0.03, ("b",), flag)]) == []  # 0.03 > 0.05 / 2


SETTINGS = [(CLEAN, 0.0), ("fgsm", 8.0), ("bim", 8.0), ("step_ll", 8.0), ("iter_ll", 8.0)]
SUITE = Suite(tuple(AttackSpec(name, name, (8.0,), build_config(name, {})) for name in
                    ("fgsm", "bim", "step_ll", "iter_ll")))


def outcomes(fooled: dict[str, int], least_likely: dict[str, int], n: int = N) -> Outcomes:
    """n samples of label 0 with least-likely class 9: per attack, the first k fooled (class 1), then the
    next j sent to class 9 (also fooled)."""
    pred = np.zeros((len(SETTINGS), n), dtype=np.int32)
    for s, (attack, _) in enumerate(SETTINGS[1:], 1):
        k, j = fooled.get(attack, 0), least_likely.get(attack, 0)
        pred[s, :k], pred[s, k:k + j] = 1, 9
    return Outcomes([str(i) for i in range(n)], np.zeros(n, np.int64), SETTINGS, pred, pred == 0,
                    np.full(n, 9, np.int32))


def test_counterparts_pair_iterative_with_single_step() -> None:
    assert [(a.id, b.id) for a, b in health.counterparts(SUITE)] == [("bim", "fgsm"), ("iter_ll", "step_ll")]
    other = Suite((AttackSpec("fgsm", "fgsm", (8.0,), build_config("fgsm", {"label": "predicted"})),
                   AttackSpec("bim", "bim", (8.0,), build_config("bim", {"label": "true"}))))
    assert health.counterparts(other) == []  # different labels: not the same attack


@pytest.mark.parametrize(("bim", "flagged"), [(400, True), (599, False), (900, False)])
def test_iterative_weaker_than_single_step(bim: int, flagged: bool) -> None:
    out = outcomes({"fgsm": 600, "bim": bim}, {"step_ll": 500, "iter_ll": 500})
    flags = health.iterative_weaker({"m": out}, SUITE)
    assert [(f.check, f.attack, f.eps) for f in flags] == (
        [("iterative_weaker_than_single_step", "bim", 8.0)] if flagged else [])
    if flagged:
        message = flags[0].message
        assert "bim fools 40.0% of samples at eps 8, fgsm 60.0% (200 samples better, 0 worse for fgsm" in message


def test_iter_ll_is_judged_on_reaching_the_least_likely_class() -> None:
    # iter_ll leaves top-1 *higher* than step_ll (200 vs 700 fooled) but reaches class 9 more often: sound
    sound = outcomes({"step_ll": 600}, {"step_ll": 100, "iter_ll": 200})
    assert health.iterative_weaker({"m": sound}, SUITE) == []
    weak = outcomes({"iter_ll": 600}, {"step_ll": 500, "iter_ll": 100})  # fools more, reaches class 9 less
    (f,) = health.iterative_weaker({"m": weak}, SUITE)
    assert f.attack == "iter_ll" and "iter_ll reaches the least-likely class on 10.0% of samples" in f.message


def test_counterparts_and_comparisons_stay_within_one_norm() -> None:
    l2_bim = AttackSpec("bim", "bim", (8.0,), build_config("bim", {"norm": "l2", "step_size": 0.5}))
    mixed = Suite((SUITE.attacks[0], l2_bim, *SUITE.attacks[2:]))
    assert [(a.id, b.id) for a, b in health.counterparts(mixed)] == [("iter_ll", "step_ll")]
    out = outcomes({"fgsm": 600, "bim": 100}, {})  # an L2 bim at "eps 8" fools less than an L-inf fgsm: no flag
    assert health.iterative_weaker({"m": out}, mixed) == []


def test_a_black_box_is_compared_with_gradient_attacks_of_its_own_norm() -> None:
    settings = [(CLEAN, 0.0), ("pgd", 1.0), ("square", 1.0), ("pgd-l2", 1.0)]
    n = 100
    pred = np.zeros((4, n), dtype=np.int32)
    pred[2, :10] = 1  # square (L2) fools 10 samples that the L2 pgd missed
    pred[1, :10] = 1  # the L-inf pgd at eps 1/255 fools the same 10: another ball, no witness
    out = Outcomes([str(i) for i in range(n)], np.zeros(n, np.int64), settings, pred, pred == 0)
    specs = (AttackSpec("pgd", "pgd", (1.0,), build_config("pgd", {})),
             AttackSpec("square", "square", (1.0,), build_config("square", {"norm": "l2"})),
             AttackSpec("pgd-l2", "pgd", (1.0,), build_config("pgd", {"norm": "l2"})))
    (f,) = health.black_box_beats_white_box({"m": out}, Suite(specs))
    assert (f.attack, f.eps) == ("square", 1.0) and "all 1 gradient attacks missed" in f.message


def transfer_rows(transfer: float, n: int = N) -> pd.DataFrame:
    cols = ["source", "target", "attack", "eps", "target_top1", "n"]
    return pd.DataFrame([("b", "b", CLEAN, 0.0, 0.9, n), ("b", "b", "fgsm", 8.0, 0.5, n),
                         ("a", "b", "fgsm", 8.0, transfer, n), ("a", "a", "fgsm", 8.0, 0.1, n)], columns=cols)


@pytest.mark.parametrize(("transfer", "flagged"), [(0.2, True), (0.499, False), (0.7, False)])
def test_transfer_beats_white_box(transfer: float, flagged: bool) -> None:
    correct = {("b", "b", "fgsm", 8.0): right(500), ("a", "b", "fgsm", 8.0): right(round(transfer * N)),
               ("a", "a", "fgsm", 8.0): right(100)}
    for paired in (correct, None):
        flags = health.transfer_beats_white_box(transfer_rows(transfer), paired)
        assert [(f.check, f.model, f.attack, f.eps) for f in flags] == (
            [("transfer_beats_white_box", "b", "fgsm", 8.0)] if flagged else [])
    if flagged:
        assert "from a leave 0.200 top-1 at eps 8, below the white-box 0.500" in flags[0].message


def test_perturbation_exceeds_eps() -> None:
    table = rows({(CLEAN, 0.0): 0.9, ("fgsm", 4.0): 0.5, ("fgsm", 8.0): 0.3})
    table["linf_max"] = [0.0, 4.0 + 0.5 * health.LINF_TOL, 8.02]  # float slack at eps 4; eps 8 overshoots
    (f,) = health.perturbation_exceeds_eps(table)
    assert (f.check, f.attack, f.eps) == ("perturbation_exceeds_eps", "fgsm", 8.0) and "8.02/255" in f.message
    table["linf_max"] = [0.0, 4.0, 8.0]
    assert health.perturbation_exceeds_eps(table) == []
    assert health.perturbation_exceeds_eps(table.drop(columns="linf_max")) == []


def test_perturbation_exceeds_eps_reads_each_rows_norm() -> None:
    table = rows({(CLEAN, 0.0): 0.9, ("pgd", 8.0): 0.3, ("pgd-l2", 0.5): 0.4, ("worst-l2", 0.5): 0.4})
    table["norm"] = [None, "linf", "l2", "l2"]
    table["linf_max"] = [0.0, 8.0, 30.0, 30.0]  # an L2 example may move one pixel far: no L-inf bound on it
    table["l2_max"] = [0.0, 3.0, 0.5 + 0.5 * health.L2_TOL, 0.52]
    (f,) = health.perturbation_exceeds_eps(table)
    assert (f.attack, f.eps) == ("worst-l2", 0.5)
    assert f.message == "max ||x_adv - x||_2 is 0.52, above L2 eps 0.5 (pixels in [0, 1])"
    old = table.drop(columns=["norm", "l2_max"])  # a file older than L2: every row L-inf
    assert [f.attack for f in health.perturbation_exceeds_eps(old)] == ["pgd-l2", "worst-l2"]


@pytest.mark.parametrize(("ref", "tol", "flagged"), [
    (0.97, None, True),  # 90/100: exact 95% interval [0.824, 0.951]
    (0.93, None, False),
    (0.80, None, True),
    (0.93, 0.02, True),
    (0.93, 0.05, False),
])
def test_clean_accuracy_mismatch(ref: float, tol: float | None, flagged: bool) -> None:
    table = pd.concat([rows({(CLEAN, 0.0): 0.9, ("fgsm", 8.0): 0.97}, n=100), rows({(CLEAN, 0.0): 0.5}, "other")])
    flags = health.clean_accuracy_mismatch(table, {"m": ref}, tol)
    assert [(f.check, f.model, f.attack, f.eps) for f in flags] == ([("clean_accuracy_mismatch", "m", None, None)]
                                                                    if flagged else [])
    if flagged:
        why = "more than 0.02 away" if tol else "outside its exact 95% interval [0.824, 0.951]"
        assert flags[0].message == f"clean top-1 0.900 (90/100), but the reference {ref:g} is {why}"


def test_check_refs_names_the_unknown_label() -> None:
    health.check_refs({"a": 0.9}, ["a", "b"])
    with pytest.raises(FieldError, match=r"^clean_refs names 'c', which is not a model; labels: a, b$"):
        health.check_refs({"a": 0.9, "c": 0.5}, ["a", "b"])


def test_nonfinite_logits_counts_each_sample_once_per_model() -> None:
    out = outcomes({"fgsm": 10}, {})
    assert health.nonfinite_logits([("m", out)]) == []
    pred = out.pred.copy()
    pred[0, :3] = NONFINITE  # 3 samples NaN clean (and under fgsm too: still 3)
    pred[1, :5] = pred[2, 990:] = NONFINITE  # 2 more under fgsm, 10 more under step_ll
    bad = Outcomes(out.ids, out.labels, out.settings, pred, out.top5, out.least_likely)
    expected = [health.flag("nonfinite_logits", "m", "15 of 1000 samples gave NaN or inf logits (3 clean, 12 more "
                            "only under attack); they count as wrong")]
    assert health.nonfinite_logits([("m", bad)]) == expected
    assert health.nonfinite_logits([("m", bad), ("m", bad), ("n", out)]) == expected  # a target of two sources


NAN_MODEL = """import torch
from torch import nn


class NanLogits(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2, 3))[:, None] * self.w * float("nan")
"""


def test_all_nan_model_is_a_finding_that_fails_a_strict_gate(tmp_path: Path) -> None:
    spec = f"nan={write(tmp_path / 'nan_model.py', NAN_MODEL)}:NanLogits"
    out = tmp_path / "r.json"
    r = invoke("eval", spec, "--limit", "8", "--attack", "fgsm", "--eps", "8", "-q", "--no-health", "--out", out)
    assert r.exit_code == 0, r.stderr
    finding = health.flag("nonfinite_logits", "nan", "8 of 8 samples gave NaN or inf logits (8 clean, 0 more only "
                          "under attack); they count as wrong")
    assert f"health warning: {finding.line()}" in r.stderr.splitlines()
    assert json.loads(out.read_text())["health"] == [finding.record()]
    r = invoke("gate", out, "--rules", write(tmp_path / "strict.yaml", "- {health: strict}\n"))
    assert r.exit_code == 1 and "nonfinite_logits" in r.stdout, (r.stdout, r.stderr)
    r = invoke("gate", out, "--rules", write(tmp_path / "warn.yaml", "- {health: warn}\n"))
    assert r.exit_code == 0 and "nonfinite_logits" in r.stdout, (r.stdout, r.stderr)


# --- every check is documented ---------------------------------------------------------------------

def test_docs_have_one_section_per_check_where_its_flags_link() -> None:
    """docs/health.md has one heading (anchor) per check, in CHECKS' order; tests/test_docs.py builds the anchors."""
    text = (REPO / health.DOCS).read_text(encoding="utf-8")
    assert re.findall(r"^## (\S+)$", text, re.M) == list(health.CHECKS)
    assert [c.docs for c in health.CHECKS.values()] == [f"docs/health.md#{name}" for name in health.CHECKS]
    for option in ("--clean-ref", "--clean-ref-tol", "--no-health", "--probe-samples", "health: strict"):
        assert option in text
    example = health.flag("zero_gradients", "m", "100% of the input-gradient entries are exactly zero (more than 50%)")
    for page in (REPO / "README.md", REPO / health.DOCS):  # the warning line both show is the one robench prints
        assert f"health warning: {example.line()}\n" in page.read_text(encoding="utf-8"), page


# --- the zoo is silent; flags reach the CLI, the results file, leak-check and the gate --------------

@pytest.mark.slow
def test_zoo_eval_is_silent_and_writes_an_empty_health_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = []

    def spy(*args, **kwargs):
        results.append(run_eval(*args, **kwargs))
        return results[-1]

    run_eval = evaluate.run_eval
    monkeypatch.setattr(evaluate, "run_eval", spy)
    r = invoke("eval", *ZOO_PAIR, "--limit", "40", "-q", "--out", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    (result,) = results
    assert len(result.rows) == 2 * (1 + 5 * 4 + 4)  # both models, the default suite: 5 attacks x 4 eps, worst x 4
    assert result.health == [] and "health warning" not in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["health"] == []


def test_zoo_transfer_matrix_is_silent() -> None:
    # the default suite's white-box checks on these models are the eval test's; this one is about transfer
    suite = override(load_suite(), ("fgsm", "step_ll", "pgd"), (4.0, 16.0))
    result = run_transfer(TransferConfig(ZOO_PAIR, run=RunSpec(suite=suite, limit=40)))
    assert set(result.rows["source"]) == {"effnet-base", "resnet-stepll"} and len(result.rows) == 2 + 4 * 3 * 2
    assert result.health == [] and result.meta["health"] == []


PROBE_FLAG = health.flag("probability_outputs", "effnet-base", "every output lies in [0, 1] and each row sums to 1")


@pytest.fixture
def flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model probes as if it output probabilities."""
    monkeypatch.setattr(probes, "probe", lambda model, images, labels, label: [PROBE_FLAG])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flag_is_warned_written_and_gated(flagged, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = invoke("eval", "zoo:effnet-base", "--limit", "20", "--attack", "fgsm", "--eps", "8", "-q", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.splitlines() == [f"health warning: {PROBE_FLAG.line()}"]
    assert json.loads(out.read_text())["health"] == [PROBE_FLAG.record()]
    strict = write(tmp_path / "strict.yaml", "- {health: strict}\n")
    r = invoke("gate", out, "--rules", strict)
    assert r.exit_code == 1 and "probability_outputs" in r.stdout, (r.stdout, r.stderr)
    r = invoke("gate", out, "--rules", write(tmp_path / "warn.yaml", "- {health: warn}\n"))
    assert r.exit_code == 0 and "probability_outputs" in r.stdout, (r.stdout, r.stderr)
    r = invoke("eval", "zoo:effnet-base", "--limit", "20", "--attack", "fgsm", "--eps", "8", "-q", "--no-health",
               "--rules", strict)
    assert r.exit_code == 0 and "health warning" not in r.stderr, r.stderr  # --no-health: no probes ran


def test_leak_check_carries_and_warns_health(flagged, tmp_path: Path) -> None:
    cfg = leak.LeakConfig(eval=evaluate.EvalConfig(("zoo:effnet-base",), RunSpec(suite=leak.leak_suite((8.0,)),
                                                                                 limit=20)))
    result = leak.run_leak_check(cfg)
    assert result.health == [PROBE_FLAG] and result.meta["health"] == [PROBE_FLAG.record()]
    out = tmp_path / "r.json"
    r = invoke("leak-check", "zoo:effnet-base", "--eps", "8", "--limit", "20", "-q", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.splitlines() == [f"health warning: {PROBE_FLAG.line()}"]
    assert json.loads(out.read_text())["health"] == [PROBE_FLAG.record()]


# --- the probes' sample count reaches the results -------------------------------------------------

@pytest.fixture
def probed_images(monkeypatch: pytest.MonkeyPatch) -> list:
    """The images every probe call saw (the probes then run as usual)."""
    seen: list = []
    real = probes.probe

    def spy(model, images, labels, label):
        seen.append(images)
        return real(model, images, labels, label)

    monkeypatch.setattr(probes, "probe", spy)
    return seen


def test_probes_take_the_runs_first_samples_at_any_batch_size(probed_images: list) -> None:
    from robench.core.distributed import LOCAL
    from robench.run.runspec import open_run, probe_models

    for batch_size in (3, 100):  # 8 samples span three batches of 3; one batch of 100 holds all 20
        run = RunSpec(limit=20, batch_size=batch_size, probe_samples=8)
        opened = open_run(run, ("zoo:effnet-base",), LOCAL)
        probed = probe_models(opened, run, LOCAL)
        assert (probed.samples, probed.max_samples, probed.record()) == (8, 8, {"samples": 8, "max_samples": 8})
    first = next(opened.source.batches(opened.models[0].input, 8)).images
    assert len(probed_images) == 2 and all(torch.equal(x, first) for x in probed_images)


FGSM8 = override(load_suite(), ("fgsm",), (8.0,))


@pytest.mark.parametrize(("fields", "record"), [
    ({}, {"samples": 20, "max_samples": 32}),  # the default: more than the data, so all of it
    ({"probe_samples": 5}, {"samples": 5, "max_samples": 5}),
    ({"probe_samples": 5, "health_probes": False}, None),
])
def test_results_record_the_probed_samples(fields: dict, record: dict | None, probed_images: list) -> None:
    run = RunSpec(suite=FGSM8, limit=20, **fields)
    result = evaluate.run_eval(evaluate.EvalConfig(("zoo:effnet-base",), run))
    assert result is not None and result.meta["probes"] == record
    assert result.meta["config"]["probe_samples"] == fields.get("probe_samples", 32)
    assert [len(x) for x in probed_images] == ([] if record is None else [record["samples"]])


def test_transfer_and_leak_check_record_the_probed_samples(probed_images: list) -> None:
    result = run_transfer(TransferConfig(ZOO_PAIR, run=RunSpec(suite=FGSM8, limit=12, probe_samples=4)))
    assert result is not None and result.meta["probes"] == {"samples": 4, "max_samples": 4}
    cfg = leak.LeakConfig(eval=evaluate.EvalConfig(("zoo:effnet-base",), RunSpec(suite=leak.leak_suite((8.0,)),
                                                                                 limit=12, probe_samples=3)))
    assert leak.run_leak_check(cfg).meta["probes"] == {"samples": 3, "max_samples": 3}
    assert [len(x) for x in probed_images] == [4, 4, 3]


def test_probe_samples_option_is_written_and_read_back(tmp_path: Path) -> None:
    from robench.results.read import load_results

    out = tmp_path / "r.json"
    r = invoke("eval", "zoo:effnet-base", "--limit", "20", "--attack", "fgsm", "--eps", "8", "-q",
               "--probe-samples", "6", "--out", out)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["probes"] == {"samples": 6, "max_samples": 6} and doc["config"]["probe_samples"] == 6
    assert load_results(out)["probes"] == {"samples": 6, "max_samples": 6}  # the schema reads it


def test_old_results_without_probes_still_read(tmp_path: Path) -> None:
    from robench.results.schema import ResultsFile

    doc = {"schema_version": 2, "command": "eval", "rows": [{"model": "m", "attack": "clean", "eps": 0.0, "top1": 0.5,
                                                             "n": 4}]}
    assert ResultsFile.model_validate(doc).probes is None
    assert ResultsFile.model_validate({**doc, "probes": None}).probes is None
    with pytest.raises(ValueError, match="probes.samples"):
        ResultsFile.model_validate({**doc, "probes": {"samples": -1, "max_samples": 32}})
