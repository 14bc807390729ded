"""Attack properties (one contract over the whole registry) and hand-computed exact cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robench.attacks.base as base
import robench.attacks.iterative as iterative
from robench.attacks import REGISTRY, Labels, get_attack
from robench.attacks.iterative import BimConfig, IterLLConfig, PgdConfig, paper_steps
from robench.attacks.single_step import FgsmConfig, StepLLConfig
from robench.errors import RobenchError

EPS = [0.0, 2.0, 8.0, 16.0]


def _inputs(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 6, 6, generator=g)
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.999])  # pixels at and near the bounds
    return x, torch.randint(0, 5, (n,), generator=g)


def _labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Labels:
    model.eval()
    with torch.no_grad():
        return Labels.from_logits(model(x), y)


def _run(name: str, model: nn.Module, x: torch.Tensor, labels: Labels, eps: list[float], config=None, seed=0):
    attack = REGISTRY[name]
    rng = torch.Generator().manual_seed(seed)
    return dict(attack.run(model, x, labels, eps, config or attack.config(), rng))


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("train_mode", [True, False])
def test_contract(name: str, train_mode: bool, small_cnn: nn.Module) -> None:
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    small_cnn.train(train_mode)
    params = list(small_cnn.parameters())
    params[0].grad = torch.full_like(params[0], 0.25)
    params[1].requires_grad_(False)
    state = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    x_before = x.clone()

    out = _run(name, small_cnn, x, labels, EPS)

    assert list(out) == EPS
    assert torch.equal(x, x_before), "input mutated"
    assert torch.equal(out[0.0], x), "eps 0 must be the identity"
    for eps, x_adv in out.items():
        assert (x_adv - x).abs().max() <= eps / 255 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (out[16.0] - x).abs().max() > 8 / 255, "the attack did not move"
    assert all(m.training == train_mode for m in small_cnn.modules())
    assert all(torch.equal(state[k], v) for k, v in small_cnn.state_dict().items()), "BN buffers changed"
    assert torch.equal(params[0].grad, torch.full_like(params[0], 0.25)) and params[2].grad is None
    assert [p.requires_grad for p in params[:3]] == [True, False, True]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_batch_equals_one_by_one(name: str, small_cnn: nn.Module) -> None:
    config = PgdConfig(random_start=False) if name == "pgd" else None
    x, y = _inputs(4)
    labels = _labels(small_cnn, x, y)
    whole = _run(name, small_cnn, x, labels, [4.0, 8.0], config)
    for i in range(4):
        one = Labels(labels.true[i : i + 1], labels.predicted[i : i + 1], labels.least_likely[i : i + 1])
        single = _run(name, small_cnn, x[i : i + 1], one, [4.0, 8.0], config)
        for eps in (4.0, 8.0):
            torch.testing.assert_close(single[eps][0], whole[eps][i], rtol=0, atol=0)


def _linear_grad_sign(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sign of d CE / dx for logits = W x + b, by hand: W^T (softmax - onehot)."""
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    p = torch.softmax(x.flatten(1) @ w.T + b, dim=1)
    return ((p - F.one_hot(target, 2).float()) @ w).sign().view_as(x)


def test_fgsm_exact_on_linear_model(linear_model) -> None:
    # logits = [0.6*1 - 0.2*2 + 0.1*0.5 + 0.1, ...]; with label 0 the gradient is
    # (p0 - 1) * w0 + p1 * w1 = p1 * (w1 - w0) = p1 * [-2, 3, -1, 3] -> sign [-1, 1, -1, 1]
    x = torch.tensor([[[[0.6, 0.2], [0.1, 0.999]]]])
    out = _run("fgsm", linear_model, x, _labels(linear_model, x, torch.tensor([0])), [8.0, 255.0])
    e = 8 / 255
    expected = torch.tensor([[[[0.6 - e, 0.2 + e], [0.1 - e, 1.0]]]])
    torch.testing.assert_close(out[8.0], expected, rtol=0, atol=1e-7)
    assert torch.equal(out[255.0], torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]))
    hand = _linear_grad_sign(linear_model, x, torch.tensor([0]))
    assert torch.equal(hand, torch.tensor([-1.0, 1, -1, 1]).view(1, 1, 2, 2))


def test_fgsm_and_step_ll_match_hand_gradient(linear_model) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 2, 2, generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    labels = _labels(linear_model, x, y)
    e = 4.0
    fg = _run("fgsm", linear_model, x, labels, [e])[e]
    assert torch.equal(fg, (x + e / 255 * _linear_grad_sign(linear_model, x, y)).clamp(0, 1))
    ll = _run("step_ll", linear_model, x, labels, [e])[e]
    assert torch.equal(ll, (x - e / 255 * _linear_grad_sign(linear_model, x, labels.least_likely)).clamp(0, 1))


def test_least_likely_is_argmin_and_predicted_labels(small_cnn: nn.Module) -> None:
    x, y = _inputs(8)
    small_cnn.eval()
    logits = small_cnn(x).detach()
    labels = Labels.from_logits(logits, y)
    assert torch.equal(labels.least_likely, logits.argmin(1)) and torch.equal(labels.predicted, logits.argmax(1))
    true = _run("fgsm", small_cnn, x, labels, [8.0], FgsmConfig("true"))[8.0]
    pred = _run("fgsm", small_cnn, x, labels, [8.0], FgsmConfig("predicted"))[8.0]
    same = labels.predicted == y
    assert same.any() and (~same).any()
    assert torch.equal(true[same], pred[same]) and not torch.equal(true[~same], pred[~same])


@pytest.mark.parametrize(
    ("name", "config"),
    [("fgsm", FgsmConfig()), ("step_ll", StepLLConfig()), ("bim", BimConfig()), ("iter_ll", IterLLConfig())],
)
def test_shared_sweep_equals_per_eps_calls(name: str, config, small_cnn: nn.Module) -> None:
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    sweep = _run(name, small_cnn, x, labels, [2.0, 4.0, 8.0, 16.0], config)
    for eps in (2.0, 4.0, 8.0, 16.0):
        assert torch.equal(sweep[eps], _run(name, small_cnn, x, labels, [eps], config)[eps])


def test_paper_schedule() -> None:
    assert [paper_steps(e) for e in (0, 1, 2, 4, 8, 16, 32)] == [0, 1, 2, 5, 10, 20, 36]


@pytest.mark.parametrize(("name", "expected"), [("fgsm", 1), ("step_ll", 1), ("bim", 34), ("iter_ll", 34), ("pgd", 40)])
def test_gradient_count(name: str, expected: int, small_cnn: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting(model, x, target):
        calls.append(1)
        return base.gradient_sign(model, x, target)

    monkeypatch.setattr(iterative, "gradient_sign", counting)
    monkeypatch.setattr("robench.attacks.single_step.gradient_sign", counting)
    x, y = _inputs(2)
    _run(name, small_cnn, x, _labels(small_cnn, x, y), [2.0, 4.0, 8.0, 16.0])
    # bim/iter_ll: first gradient shared, then (2-1) + (5-1) + (10-1) + (20-1) = 33 more
    assert len(calls) == expected


def test_pgd_step_size_and_random_start(small_cnn: nn.Module) -> None:
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    a = _run("pgd", small_cnn, x, labels, [8.0], seed=1)[8.0]
    b = _run("pgd", small_cnn, x, labels, [8.0], seed=1)[8.0]
    c = _run("pgd", small_cnn, x, labels, [8.0], seed=2)[8.0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    one = _run("pgd", small_cnn, x, labels, [8.0], PgdConfig(steps=1, step_size=8.0, random_start=False))[8.0]
    assert torch.equal(one, _run("fgsm", small_cnn, x, labels, [8.0])[8.0])


def test_unknown_attack_suggests() -> None:
    with pytest.raises(RobenchError, match="did you mean fgsm"):
        get_attack("fgsmm")
