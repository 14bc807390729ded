"""leak-check: paired statistics, verdicts, a leak built by construction, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robench.attacks.suite import CLEAN
from robench.cli.main import main
from robench.core import stats
from robench.data import Batch
from robench.engine import Outcomes, evaluate
from robench.run import leak

EPS = 8.0
SETTINGS = [(CLEAN, 0.0), (leak.FGSM_TRUE, EPS), (leak.FGSM_PREDICTED, EPS), (leak.STEP_LL, EPS)]


def outcomes(clean: np.ndarray, true_: np.ndarray, predicted: np.ndarray) -> Outcomes:
    """Outcomes of 10-class samples (label 0) from per-setting correctness; wrong means class 1."""
    n = len(clean)
    out = Outcomes.empty([str(i) for i in range(n)], SETTINGS)
    out.labels[:] = 0
    for s, right in enumerate([clean, true_, predicted, np.zeros(n, bool)]):
        out.pred[s] = np.where(right, 0, 1)
    return out


def verdict(out: Outcomes) -> str:
    return leak.summarize(out, "m", alpha=0.05, margin=0.02)[1]


# --- statistics, by hand ------------------------------------------------------------------------

def test_exact_mcnemar_tail_by_hand() -> None:
    assert stats.binom_tail(5, 5) == 0.5**5
    assert stats.binom_tail(4, 5) == pytest.approx(6 / 32)  # (C(5,4) + C(5,5)) / 2^5
    assert stats.binom_tail(0, 0) == 1.0
    assert stats.binom_tail(3, 2) == 0.0


def test_paired_counts_and_interval_by_hand() -> None:
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 1, 1, 1], bool)
    d = stats.paired(a, b, confidence=0.95)
    assert (d.n, d.gained, d.lost, d.diff) == (5, 2, 1, 0.2)
    assert d.p_greater == pytest.approx(0.5)  # P(X >= 2), X ~ Bin(3, 1/2) = 4/8
    assert d.p_less == pytest.approx(7 / 8)  # P(X >= 1)
    p_gain, p_lose = 3 / 7, 2 / 7  # Bonett-Price: (count + 1) / (n + 2)
    half = 1.959963984540054 * math.sqrt((p_gain + p_lose - (p_gain - p_lose) ** 2) / 7)
    assert (d.low, d.high) == pytest.approx((1 / 7 - half, 1 / 7 + half))


def test_holm_step_down() -> None:
    assert stats.holm([0.01, 0.04, 0.03], 0.05) == [True, False, False]
    assert stats.holm([0.01, 0.02, 0.04], 0.05) == [True, True, True]
    assert stats.holm([0.03, 0.03], 0.05) == [False, False]


# --- verdicts on hand-built outcome tables --------------------------------------------------------

def test_leak_case() -> None:
    clean = np.arange(1000) < 800
    true_ = np.arange(1000) < 850  # right on 50 of the clean mistakes: better than clean
    predicted = np.arange(1000) < 700
    assert verdict(outcomes(clean, true_, predicted)) == leak.LEAK


def test_clean_case() -> None:
    clean = np.arange(1000) < 950
    true_ = np.arange(1000) < 600
    assert verdict(outcomes(clean, true_, true_.copy())) == leak.OK


def test_noise_is_not_flagged() -> None:
    clean = np.arange(1000) < 900
    true_ = np.arange(1000) < 901  # one sample in 1000 better than clean and than predicted
    predicted = np.arange(1000) < 900
    rows, v = leak.summarize(outcomes(clean, true_, predicted), "m", 0.05, 0.02)
    assert v == leak.OK
    assert rows.loc[0, "leak_gap"] == pytest.approx(0.001)
    assert not rows.loc[0, "leak_gap_significant"]


def test_too_few_samples_is_inconclusive() -> None:
    clean = np.arange(20) < 18
    assert verdict(outcomes(clean, clean.copy(), clean.copy())) == leak.INCONCLUSIVE


def test_holm_keeps_a_borderline_gap_from_flagging() -> None:
    # 5 of 5 discordant samples favour fgsm_true: p = 1/32 < 0.05 alone, but not after Holm over 2 tests.
    clean = np.arange(1000) < 900
    true_ = np.arange(1000) < 905
    rows, v = leak.summarize(outcomes(clean, true_, true_.copy()), "m", 0.05, 0.02)
    assert rows.loc[0, "adv_minus_clean_p"] == pytest.approx(1 / 32)
    assert v != leak.LEAK


# --- a leak by construction -------------------------------------------------------------------------

def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


class SignReader(nn.Module):
    """Reads the sign pattern FGSM leaves: a shift of -eps along class k's template makes k win.

    logits_k = z_k - (z_k / tau)^3 with z = templates (x - 1/2) / D: near clean inputs the
    logits are ~ z (noise, so clean accuracy is chance), and FGSM with label y, which pushes
    z_y down by eps, sends logit y up by (eps / tau)^3.
    """

    def __init__(self, classes: int = 10, side: int = 16, tau: float = 0.005) -> None:
        super().__init__()
        d = side * side
        self.read = nn.Linear(d, classes, bias=False)
        with torch.no_grad():
            self.read.weight.copy_(hadamard(d)[1 : classes + 1] / d)
        self.tau = tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.read(x.flatten(1) - 0.5)
        return z - (z / self.tau) ** 3


def noise_batches(n: int = 400, batch: int = 100) -> tuple[list[Batch], list[str]]:
    gen = torch.Generator().manual_seed(0)
    images = 0.5 + 0.001 * torch.randn(n, 1, 16, 16, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    rows = torch.arange(n)
    batches = [Batch(images[i : i + batch], labels[i : i + batch], rows[i : i + batch]) for i in range(0, n, batch)]
    return batches, [f"noise-{i}" for i in range(n)]


def sign_reader_outcomes() -> Outcomes:
    batches, ids = noise_batches()
    return evaluate(SignReader(), batches, ids, leak.leak_suite((2.0, 8.0)))


def test_sign_reading_model_is_flagged() -> None:
    rows, v = leak.summarize(sign_reader_outcomes(), "sign-reader", 0.05, 0.02)
    assert v == leak.LEAK
    assert (rows["clean_top1"] < 0.2).all()
    assert (rows["fgsm_true_top1"] > 0.9).all()
    assert (rows["leak_gap"] > 0.7).all() and rows["leak_gap_significant"].all()
    assert rows["adv_minus_clean_significant"].all()


@pytest.mark.slow
def test_true_and_predicted_agree_where_the_model_is_right() -> None:
    from robench.run.evaluate import EvalConfig
    from robench.run.runspec import RunSpec

    cfg = leak.LeakConfig(eval=EvalConfig(("zoo:effnet-fgsm-true",), RunSpec(suite=leak.leak_suite((4.0, 16.0)),
                                                                              limit=120)))
    result = leak.run_leak_check(cfg)
    out = result.outcomes["effnet-fgsm-true"]
    index = {k: s for s, k in enumerate(out.settings)}
    right = out.pred[0] == out.labels
    assert (~right).sum() > 0 and right.sum() > 100
    for eps in (4.0, 16.0):
        t, p = out.pred[index[(leak.FGSM_TRUE, eps)]], out.pred[index[(leak.FGSM_PREDICTED, eps)]]
        assert np.array_equal(t[right], p[right])
    sign_reader = sign_reader_outcomes()
    right = sign_reader.pred[0] == sign_reader.labels
    assert np.array_equal(sign_reader.pred[1][right], sign_reader.pred[3][right])  # fgsm true / predicted, eps 2
    assert not np.array_equal(sign_reader.pred[1], sign_reader.pred[3])


# --- the command ---------------------------------------------------------------------------------------

def test_cli_zoo_models_pass_and_write_results(tmp_path: Path) -> None:
    out = tmp_path / "leak.json"
    r = CliRunner().invoke(main, ["leak-check", "--eps", "8", "--limit", "120", "--fail-on-leak", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "effnet-fgsm-true" in r.stdout and "leak_gap" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["command"] == "leak-check" and doc["schema_version"] == 2
    assert set(doc["verdicts"]) == {"effnet-fgsm-true", "effnet-fgsm-pred", "effnet-stepll"}
    assert leak.LEAK not in doc["verdicts"].values()
    assert len(doc["rows"]) == 3 and doc["rows"][0]["n"] == 120
    assert len(doc["samples"]["records"]) == 3 * 4
    assert doc["config"]["alpha"] == 0.05 and doc["config"]["eval"]["limit"] == 120


def test_default_eps_add_each_models_training_eps(tmp_path: Path) -> None:
    """Trained at a fixed 0.3 px, a model leaks at 76.5/255: the default list gains it; the zoo's (16) adds nothing."""
    from safetensors.torch import load_file, save_file

    from robench.models.checkpoint import read_metadata
    from robench.models.recipe import TrainConfig
    from robench.train.loop import train

    ckpt = tmp_path / "fixed.safetensors"
    train(TrainConfig(arch="test_efficientnet", train_attack="fgsm", eps_max=76.5, eps_dist="fixed", epochs=1,
                      limit=64, image_size=16), ckpt)
    plain = tmp_path / "plain.safetensors"  # plain training records eps_max 40 but no adversarial attack
    save_file(load_file(str(ckpt)), str(plain), metadata={"robench": json.dumps(
        {**read_metadata(ckpt), "recipe": {**read_metadata(ckpt)["recipe"], "attack": "none", "eps_max": 40}})})
    assert leak.default_eps(()) == (2.0, 4.0, 8.0, 16.0)  # the zoo's defaults: trained up to 16/255
    assert leak.default_eps((str(ckpt), f"again={ckpt}", str(plain), "resnet18")) == (2.0, 4.0, 8.0, 16.0, 76.5)
    r = CliRunner().invoke(main, ["leak-check", str(ckpt), "--limit", "8", "-o", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["config"]["eval"]["suite"]["attacks"][0]["eps"] == [
        2.0, 4.0, 8.0, 16.0, 76.5]
    assert "trained at eps" not in r.stderr
    r = CliRunner().invoke(main, ["leak-check", f"fx={ckpt}", str(plain), "--eps", "8", "--limit", "8"])
    assert r.exit_code == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert said.count("trained at eps") == 1, said  # the plain model was not adversarially trained
    assert ("model 'fx' was adversarially trained at eps up to 76.5/255 (its checkpoint says), which is not "
            "among the eps checked; a model leaks at the eps it was trained at: add 76.5 to --eps, or leave --eps "
            "out") in said


def test_cli_fail_on_leak_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from robench.run.evaluate import EvalResult

    def fake_eval(cfg, progress=None, warn=None, dist=None, status=None, what="eval"):  # the sign reader, not a model
        out = sign_reader_outcomes()
        return EvalResult(rows=None, outcomes={"sign-reader": out}, meta={"command": "eval"})

    monkeypatch.setattr(leak, "run_eval", fake_eval)
    args = ["leak-check", "-m", "zoo:effnet-base", "-o", str(tmp_path / "r.csv")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "LEAK" in r.stdout
    r = CliRunner().invoke(main, [*args, "--fail-on-leak"])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        "robench: error: LEAK: label leaking in sign-reader: leak_gap or adv_minus_clean is significantly > 0 "
        "(--fail-on-leak)"
    ]
    assert (tmp_path / "r.csv").is_file()  # the results are written before the check fails


def test_cli_plot_writes_an_svg_with_the_verdict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from robench.run.evaluate import EvalResult

    def fake_eval(cfg, progress=None, warn=None, dist=None, status=None, what="eval"):  # the sign reader, not a model
        return EvalResult(rows=None, outcomes={"sign-reader": sign_reader_outcomes()}, meta={"command": "eval"})

    monkeypatch.setattr(leak, "run_eval", fake_eval)
    out = tmp_path / "leak.svg"
    r = CliRunner().invoke(main, ["leak-check", "-m", "zoo:effnet-base", "-q", "--plot", str(out)])
    assert r.exit_code == 0, r.stderr
    svg = out.read_text()
    assert ET.fromstring(svg).tag.endswith("svg") and "sign-reader: LEAK" in svg


@pytest.mark.parametrize("args, needle", [
    (["--plot", "out.gif"], "unknown format '.gif'"),
    (["--eps", "8,x"], "--eps"),
    (["--alpha", "0"], "--alpha"),
    (["-m", "zoo:nope"], "unknown zoo model 'nope'"),
    (["-o", "out.txt"], "unknown format '.txt'"),
])
def test_cli_bad_input_exits_2(args: list[str], needle: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["leak-check", "--limit", "10", *args])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize(("args", "line"), [
    (["--alpha", "nan"], "robench: error: --alpha must be a number in (0, 1), got nan"),
    (["--margin", "nan"], "robench: error: --margin must be a number in [0, 1], got nan"),
])
def test_nan_alpha_or_margin_is_refused_by_name(args: list[str], line: str) -> None:
    """NaN passes click's FloatRange (it fails every comparison) and judged nothing: LeakConfig refuses it."""
    from robench.errors import FieldError
    from robench.run.leak import LeakConfig

    with pytest.raises(FieldError) as err:
        LeakConfig(alpha=float("nan"))
    assert err.value.field == "alpha"
    result = CliRunner().invoke(main, ["leak-check", "--limit", "4", *args])
    assert (result.exit_code, result.stderr.strip().splitlines()) == (2, [line])
