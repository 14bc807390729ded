"""Health checks: each probe fires on a broken toy model and leaves the model as it was, each result
check fires on a hand-built case and stays silent on noise, the zoo is silent, and flags reach the
CLI, the results file, leak-check and the gate.

Probes use a nearest-mean classifier of the digits (weights are the class means, no randomness)
on 40 test images; the broken variants differ from it in one step of their forward pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import Tensor, nn

from robench import evaluate, health, leak
from robench.cli.main import main
from robench.data import InputConfig, open_source
from robench.engine import CLEAN, Outcomes
from robench.errors import RobenchError
from robench.models import Normalized
from robench.suite import AttackSpec, Suite, build_config, load_suite, override
from robench.transfer import TransferConfig, run_transfer

REPO = Path(__file__).resolve().parents[1]
ZOO_PAIR = ("zoo:effnet-base", "zoo:resnet-stepll")  # two architectures, plain and adversarially trained


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a loaded 2-core machine two threads waiting on each other run ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- toy models ------------------------------------------------------------------------------------

class Centroids(nn.Module):
    """Nearest class mean of the digits in normalized pixels, with one optional broken step.

    ``kind``: logits (sound), softmax, log_softmax, round (input quantized: no gradient),
    dropout (left on in eval mode) or reversed (the input gradient points the wrong way).
    """

    def __init__(self, kind: str = "logits") -> None:
        super().__init__()
        src = open_source("digits", "train")
        z = (src.images.float() / src.scale).flatten(1) * 2 - 1  # what Normalized(mean 0.5, std 0.5) gives
        means = torch.stack([z[src.labels == c].mean(0) for c in range(10)])
        self.kind, self.fc = kind, nn.Linear(64, 10)
        with torch.no_grad():
            self.fc.weight.copy_(means)
            self.fc.bias.copy_(-0.5 * (means**2).sum(1))

    def forward(self, z: Tensor) -> Tensor:
        z = z.flatten(1)
        if self.kind == "round":
            z = torch.round(z * 4) / 4
        if self.kind == "reversed":
            z = 2 * z.detach() - z  # the same value, the gradient negated
        logits = self.fc(z)
        if self.kind == "dropout":
            logits = F.dropout(logits, 0.5, training=True)
        if self.kind == "softmax":
            return logits.softmax(1)
        return logits.log_softmax(1) if self.kind == "log_softmax" else logits


def toy(kind: str = "logits") -> Normalized:
    """A toy model wrapped as robench wraps every model: [0, 1] pixels in, normalization inside."""
    return Normalized(Centroids(kind), (0.5,), (0.5,))


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    """40 digits test images (1 x 8 x 8, [0, 1]) and their labels."""
    first = next(open_source("digits", limit=40).batches(InputConfig(channels=1, size=(8, 8)), 40))
    return first.images, first.labels


def probed(kind: str, batch: tuple[Tensor, Tensor]) -> dict[str, health.Flag]:
    torch.manual_seed(0)
    return {f.check: f for f in health.probe(toy(kind), *batch, kind)}


# --- probes ----------------------------------------------------------------------------------------

def test_sound_toy_model_passes_every_probe(batch) -> None:
    x, y = batch
    assert (toy()(x).argmax(1) == y).float().mean() >= 0.8  # a real classifier, so the broken ones can fail
    assert probed("logits", batch) == {}


@pytest.mark.parametrize(("kind", "checks", "needle"), [
    ("softmax", {"probability_outputs"}, "probabilities, not logits"),
    ("log_softmax", {"probability_outputs"}, "log-probabilities, not logits"),
    ("round", {"zero_gradients", "unbounded_attack_fails"}, "100% of the input-gradient entries are exactly zero"),
    ("dropout", {"randomized_outputs"}, "two forward passes in eval mode differ"),
    ("reversed", {"unbounded_attack_fails"}, "pgd (5 steps) at eps 255/255 leaves"),
])
def test_probe_fires_on_its_broken_model(kind: str, checks: set[str], needle: str, batch) -> None:
    flags = probed(kind, batch)
    assert set(flags) == checks
    assert any(needle in f.message for f in flags.values()), [f.message for f in flags.values()]
    for f in flags.values():
        assert f.model == kind and f.docs == f"README.md#{f.check}"
        assert f.line().startswith(f"{f.check} ({kind}") and f.line().endswith(f"(see README.md#{f.check})")


def test_unbounded_flag_names_pgd_at_255(batch) -> None:
    f = probed("reversed", batch)["unbounded_attack_fails"]
    assert (f.attack, f.eps) == ("pgd", 255.0)
    assert f.record() == {"check": "unbounded_attack_fails", "model": "reversed", "attack": "pgd", "eps": 255.0,
                          "message": f.message, "docs": "README.md#unbounded_attack_fails"}
    assert f.line().startswith("unbounded_attack_fails (reversed, pgd eps 255): ")


def test_probe_leaves_mode_flags_weights_and_rng_alone(batch) -> None:
    model = toy("dropout")  # dropout draws from the global RNG on every forward pass
    model.train()
    model.model.fc.bias.requires_grad_(False)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    rng = torch.get_rng_state()
    flags = health.probe(model, *batch, "m")
    assert [f.check for f in flags] == ["randomized_outputs"]  # the probes ran, and drew random numbers
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    assert model.model.fc.weight.requires_grad and not model.model.fc.bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_probe_uses_eval_mode(batch) -> None:
    model = Normalized(nn.Sequential(Centroids(), nn.Dropout(0.5)), (0.5,), (0.5,)).train()
    assert health.probe(model, *batch, "m") == []  # nn.Dropout is off in eval mode, as the engine runs it
    assert model.training


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


@pytest.mark.parametrize(("text", "parsed"), [("base=0.97", ("base", 0.97)), ("a=b=1", ("a=b", 1.0)),
                                              ("zoo:x=0", ("zoo:x", 0.0))])
def test_parse_clean_ref(text: str, parsed: tuple[str, float]) -> None:
    assert health.parse_clean_ref(text) == parsed


@pytest.mark.parametrize("text", ["base", "=0.9", "base=", "base=x", "base=1.5", "base=-0.1", "base=nan", "base=97%"])
def test_parse_clean_ref_errors(text: str) -> None:
    with pytest.raises(RobenchError) as e:
        health.parse_clean_ref(text)
    message = str(e.value)
    assert "\n" not in message and f"--clean-ref {text!r}" in message and "LABEL=SHARE" in message


def test_check_refs_names_the_unknown_label() -> None:
    health.check_refs({"a": 0.9}, ["a", "b"])
    with pytest.raises(RobenchError, match=r"^--clean-ref names 'c', which is not a model; labels: a, b$"):
        health.check_refs({"a": 0.9, "c": 0.5}, ["a", "b"])


def test_cli_clean_ref_mistakes_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate.engine, "evaluate", lambda *a, **k: pytest.fail("evaluated despite a bad reference"))
    for ref, needle in (("effnet=0.9", "names 'effnet', which is not a model; labels: effnet-base"),
                        ("effnet-base=95", "LABEL=SHARE")):
        r = invoke("eval", "zoo:effnet-base", "--limit", "10", "--clean-ref", ref, "--out", tmp_path / "r.json")
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "r.json").exists()


# --- every check is documented ---------------------------------------------------------------------

def test_readme_has_a_section_per_check() -> None:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Health checks\n", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^### (\S+)$", section, re.M) == list(health.CHECKS)
    assert text.index("\n## CI gates") < text.index("\n## Health checks\n")
    for option in ("--clean-ref", "--clean-ref-tol", "--no-health", "health: strict"):
        assert option in section


# --- the zoo is silent; flags reach the CLI, the results file, leak-check and the gate --------------

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
    assert len(result.rows) == 2 * (1 + 5 * 4)  # both models, the default suite: 5 attacks x 4 eps
    assert result.health == [] and "health warning" not in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["health"] == []


def test_zoo_transfer_matrix_is_silent() -> None:
    # the default suite's white-box checks on these models are the eval test's; this one is about transfer
    suite = override(load_suite(), ("fgsm", "step_ll", "pgd"), (4.0, 16.0))
    result = run_transfer(TransferConfig(models=ZOO_PAIR, suite=suite, limit=40))
    assert set(result.rows["source"]) == {"effnet-base", "resnet-stepll"} and len(result.rows) == 2 + 4 * 3 * 2
    assert result.health == [] and result.meta["health"] == []


PROBE_FLAG = health.flag("probability_outputs", "effnet-base", "every output lies in [0, 1] and each row sums to 1")


@pytest.fixture
def flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model probes as if it output probabilities."""
    monkeypatch.setattr(health, "probe", lambda model, images, labels, label: [PROBE_FLAG])


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
               "--gate", strict)
    assert r.exit_code == 0 and "health warning" not in r.stderr, r.stderr  # --no-health: no probes ran


def test_leak_check_carries_and_warns_health(flagged, tmp_path: Path) -> None:
    cfg = leak.LeakConfig(eval=evaluate.EvalConfig(models=("zoo:effnet-base",), suite=leak.leak_suite((8.0,)),
                                                   limit=20))
    result = leak.run_leak_check(cfg)
    assert result.health == [PROBE_FLAG] and result.meta["health"] == [PROBE_FLAG.record()]
    out = tmp_path / "r.json"
    r = invoke("leak-check", "zoo:effnet-base", "--eps", "8", "--limit", "20", "-q", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.splitlines() == [f"health warning: {PROBE_FLAG.line()}"]
    assert json.loads(out.read_text())["health"] == [PROBE_FLAG.record()]
