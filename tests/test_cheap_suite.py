"""autoattack-malt: AutoAttack's number for a quarter of its passes, never weaker where checked (issue 28)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import Linear
from masking import Scaled
from results_docs import invoke

from robench.analysis import worst
from robench.attacks.base import Labels
from robench.attacks.malt import POOL, linear_distance, malt_passes, malt_targets
from robench.attacks.suite import budget_record, load_suite, parse_suite, suite_budget
from robench.data import InputConfig
from robench.engine import Hooks, Matrix, Participant, Plan, run_batches, settings_of
from robench.engine.passes import count_passes
from robench.errors import RobenchError

# logits = W x + b at x = (0.5, 0.5), true class 0 (z_0 = 1): the other classes' gaps and gradients
# give linear distances gap / ||W_t - W_0||_1 of 0.5 / 10 = 0.05, 0.25 / 0.5 = 0.5 and 0.1 / 0.1 = 1.0,
# while their logits (0.5, 0.75, 0.9) rank them the other way round.
W = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.5, 0.0], [0.0, 0.1]])
B = torch.tensor([1.0, -4.5, 0.5, 0.85])
X = torch.full((1, 1, 1, 2), 0.5)
TRUE = torch.tensor([0])


def test_malt_ranks_targets_by_the_linear_distance_not_the_logits() -> None:
    model = Linear(W, B).eval()
    logits = model(X).detach()
    assert logits.argsort(descending=True)[0].tolist() == [0, 3, 2, 1]
    dist = linear_distance(model, X, TRUE, torch.tensor([[3, 2, 1]]))
    assert torch.allclose(dist, torch.tensor([[1.0, 0.5, 0.05]]), rtol=1e-4)
    assert malt_targets(model, X, TRUE, logits, 2).tolist() == [[1, 2]]
    assert malt_targets(model, X, TRUE, logits, 9).tolist() == [[1, 2, 3]]  # at most classes - 1


def test_without_a_gradient_malt_keeps_autoattacks_order() -> None:
    flat = Linear(torch.zeros(4, 2), B).eval()  # no input gradient: no linear estimate
    logits = flat(X).detach()
    assert torch.isinf(linear_distance(flat, X, TRUE, torch.tensor([[3, 2, 1]]))).all()
    assert malt_targets(flat, X, TRUE, logits, 2).tolist() == [[3, 2]]


def test_malt_costs_one_forward_and_a_backward_per_candidate(small_cnn) -> None:
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    logits = small_cnn(x).detach()
    with count_passes(small_cnn) as passes:
        malt_targets(small_cnn, x, logits.argmax(1), logits, 3)
    assert (passes.forward, passes.backward) == (5, 5 * min(POOL, logits.shape[1] - 1))
    assert passes.total == 5 * malt_passes(logits.shape[1])


def test_apgd_t_with_malt_fools_through_the_nearest_target() -> None:
    """One step budget, one target: logits-first aims at class 3 (1.0 away), MALT at class 1 (0.05 away)."""
    from robench.attacks.apgd import ApgdTConfig, apgd_t

    model = Linear(W, B).eval()
    found = {}
    for select in ("logits", "malt"):
        cfg = ApgdTConfig(targets=1, steps=2, random_start=False, target_select=select)
        (_, adv), = apgd_t(model, X, Labels.from_logits(model(X).detach(), TRUE), [0.1 * 255], cfg)
        found[select] = int(model(adv).argmax(1))
    assert found == {"logits": 0, "malt": 1}


def test_the_suite_plans_at_most_a_quarter_of_autoattacks_passes() -> None:
    cheap, aa = load_suite("autoattack-malt"), load_suite("autoattack")
    for classes in (10, 100, 1000):
        assert suite_budget(cheap, classes) <= 0.25 * suite_budget(aa, classes), classes
    # APGD-CE 2*100+1, MALT's ranking 1+9, APGD-T 3 targets x 201, Square 1500
    assert suite_budget(cheap, 10) == 201 + 10 + 3 * 201 + 1500
    record = budget_record(cheap, 10, {"m": 971.0})
    assert record["autoattack"] == 201 + 9 * 201 + 9 * 300 + 5000 and record["share"] <= 0.25
    assert record["spent_share"] == {"m": pytest.approx(0.1)}


def test_semantics_names_the_shortcuts_and_autoattack_has_none() -> None:
    cheap = load_suite("autoattack-malt").semantics()
    assert "3 of AutoAttack's 9 targets" in cheap and "MALT" in cheap and "1500 of AutoAttack's 5000" in cheap
    assert load_suite("autoattack").semantics() == ("robust after this stage (cascade); stop at the first "
                                                   "misclassified iterate; survivors only across eps")


def test_target_select_is_checked() -> None:
    with pytest.raises(RobenchError, match="target_select"):
        parse_suite("eps: [8]\nattacks:\n  - name: apgd_t\n    target_select: nearest\n", "s.yaml")


def test_eval_records_and_prints_the_budget_against_autoattack(tmp_path) -> None:
    r = invoke("eval", "zoo:resnet-base", "--attacks", "autoattack-malt", "--limit", "4", "--out", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    budget = json.loads((tmp_path / "r.json").read_text())["budget"]
    assert budget["planned"] == 2314 and budget["autoattack"] == 9710
    assert 0 < budget["spent"]["resnet-base"] <= budget["planned"]
    assert "passes per sample against AutoAttack standard's 9,710" in r.stdout


# --- never weaker than the full autoattack suite, sample for sample ---------------------------------


def _worst(model, batch, name: str, eps: float):
    """Per sample, robust under the suite's worst row at eps; and its passes per sample."""
    suite = load_suite(name)
    suite = dataclasses.replace(suite, attacks=tuple(dataclasses.replace(a, eps=(eps,)) for a in suite.attacks))
    plan = Plan.white_box([Participant("m", model, InputConfig())])
    out = Matrix.empty([str(i) for i in range(len(batch.labels))], settings_of(suite), plan.pairs())
    run_batches(plan, iter([{InputConfig(): batch}]), suite, out, 0, Hooks())
    o = worst.with_worst(out.pairs[("m", "m")])
    row = [i for i, (a, _) in enumerate(o.settings) if a == "worst"][0]
    passes = sum(c["forward_passes"] + c["backward_passes"] for c in out.costs()) / len(batch.labels)
    return o.correct()[row], passes


def _never_weaker(model, batch, eps: float) -> None:
    full, full_passes = _worst(model, batch, "autoattack", eps)
    cheap, cheap_passes = _worst(model, batch, "autoattack-malt", eps)
    assert not (cheap & ~full).any(), f"autoattack fools samples {(cheap & ~full).nonzero()[0]} that the suite misses"
    assert cheap_passes <= 0.25 * suite_budget(load_suite("autoattack"), 10)
    print(f"eps {eps:g}: robust {full.mean():.3f} (autoattack, {full_passes:.0f} passes) "
          f"{cheap.mean():.3f} (autoattack-malt, {cheap_passes:.0f})")


# The CI-sized cases: a model half robust at eps 8 (both attacks spend most of their budget on it) and a
# masked one. The other zoo models and eps, minutes each on 2 cores, are in bench/autoattack.py's evidence.
@pytest.mark.slow
@pytest.mark.parametrize(("name", "eps"), [("effnet-base", 8.0)])
def test_never_weaker_than_autoattack_on_the_zoo(name, eps, one_thread) -> None:
    from robench.data import load_digits_source
    from robench.models import load_model, parse_spec
    from robench.models.zoo import get

    m = load_model(parse_spec(str(get(name).path)), num_classes=10)
    batch = next(load_digits_source("test", limit=6, seed=0).batches(m.input, 6))
    _never_weaker(m.module, batch, eps)


@pytest.mark.slow
@pytest.mark.parametrize("mask", [Scaled], ids=["logits-x1000"])  # Rounded: 5,033 passes a sample, bench only
def test_never_weaker_than_autoattack_on_masked_models(mask, trained, one_thread) -> None:
    from robench.data import load_digits_source

    batch = next(load_digits_source("test", limit=12, seed=0).batches(trained.input, 12))
    _never_weaker(mask(trained.module).eval(), batch, 16.0)
