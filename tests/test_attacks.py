"""Attack tests: one contract over the whole registry, hand-computed exact results, sweeps and schedules.

Property tests use small_cnn on 6x6 images so the file runs in seconds; exact tests use linear_model,
whose input gradient W^T (softmax - onehot) is computed here by hand, never by autograd.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from masking import Rounded, Scaled
from torch import nn

import robench.attacks.base as base
import robench.attacks.fab as fab
import robench.attacks.iterative as iterative
import robench.attacks.single_step as single_step
import robench.attacks.transforms as transforms
from robench.attacks import REGISTRY, Labels, get_attack
from robench.attacks.apgd import (
    ApgdConfig,
    ApgdTConfig,
    checkpoints,
    dlr_loss,
    dlr_targeted_loss,
    rose,
)
from robench.attacks.iterative import BimConfig, IterLLConfig, PgdConfig, paper_steps
from robench.attacks.momentum import DiFgsmConfig, MiFgsmConfig, NiFgsmConfig, TiFgsmConfig, VmiFgsmConfig
from robench.attacks.single_step import FgsmConfig, StepLLConfig
from robench.attacks.square import (
    SquareConfig,
    bumps,
    l2_propose,
    l2_search,
    l2_start,
    square_search,
    square_share,
    square_side,
    two_bumps,
)
from robench.core.stop import clear_stop, request_stop, stop_requested
from robench.errors import FieldError, RobenchError, Terminated

EPS = [0.0, 2.0, 8.0, 16.0]
SWEEP = [2.0, 4.0, 8.0, 16.0]
# square's default 5000 queries cost ~15 s per unfooled sample of small_cnn here; 200 queries run every
# branch (the rescaled schedule goes through all nine halvings) in a fraction of that
FAST = {"square": SquareConfig(queries=200)}
# the L2 threat model: eps is the perturbation's L2 norm in [0, 1] pixels, as given (no /255); a 3x6x6
# image's largest L2 perturbation is about 10, so eps 1 moves each pixel by about 0.1 (25/255)
L2 = {"fgsm": FgsmConfig(norm="l2"), "bim": BimConfig(norm="l2", step_size=0.1), "pgd": PgdConfig(norm="l2"),
      "apgd": ApgdConfig(norm="l2"), "apgd_t": ApgdTConfig(norm="l2")}
L2_EPS = [0.0, 0.25, 0.5, 1.0]


def _variants(*slow: str) -> list:
    """(attack, norm) for every registered attack under linf and every L2 one; those named ("apgd_t-l2") slow."""
    pairs = [(n, "linf") for n in sorted(REGISTRY)] + [(n, "l2") for n in sorted(L2)]
    return [pytest.param(n, norm, id=f"{n}-{norm}", marks=[pytest.mark.slow] if f"{n}-{norm}" in slow else [])
            for n, norm in pairs]


def _variant_config(name: str, norm: str):
    return L2[name] if norm == "l2" else _config(name)


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Each sample's perturbation size in the attack's eps units: max |delta| * 255 (linf), ||delta||_2 (l2)."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) * 255 if norm == "linf" else flat.norm(p=2, dim=1)


def _registry(*slow: str) -> list:
    """Every registered attack's name for parametrize, those named here marked slow (2 s or more a test, measured)."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in sorted(REGISTRY)]


def _config(name: str):
    """The attack's default config, or a cheaper one with the same code paths (FAST)."""
    return FAST.get(name, REGISTRY[name].config())


def _inputs(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded [0, 1] images for small_cnn (5 classes), with pixels at and next to both bounds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 6, 6, generator=g)
    x[:, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.001, 0.999])
    return x, torch.randint(0, 5, (n,), generator=g)


def _labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Labels:
    model.eval()
    with torch.no_grad():
        return Labels.from_logits(model(x), y)


def _run(name: str, model: nn.Module, x: torch.Tensor, labels: Labels, eps: list[float], config=None, seed: int = 0):
    attack = REGISTRY[name]
    rng = torch.Generator().manual_seed(seed)
    return dict(attack.run(model, x, labels, eps, _config(name) if config is None else config, rng))


def _row(labels: Labels, i: int) -> Labels:
    return labels.rows(torch.arange(i, i + 1))


# --- the contract, for every registered attack -------------------------------------------------


@pytest.mark.parametrize(("name", "norm"), _variants())
@pytest.mark.parametrize("train_mode", [True, False], ids=["from-train", "from-eval"])
def test_contract(name: str, norm: str, train_mode: bool, small_cnn: nn.Module) -> None:
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    small_cnn.train(train_mode)
    small_cnn[3].train(not train_mode)  # a mixed state: every submodule's own flag must come back
    modes = [m.training for m in small_cnn.modules()]
    params = list(small_cnn.parameters())
    known = torch.full_like(params[0], 0.25)
    params[0].grad = known.clone()
    params[1].requires_grad_(False)
    flags = [p.requires_grad for p in params]
    buffers = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    assert "1.num_batches_tracked" in buffers and "1.running_var" in buffers
    x_before = x.clone()

    eps_list = EPS if norm == "linf" else L2_EPS
    out = _run(name, small_cnn, x, labels, eps_list, _variant_config(name, norm))

    assert list(out) == eps_list, "one output per eps, in order"
    assert torch.equal(x, x_before), "input mutated"
    assert torch.equal(out[0.0], x), "eps 0 must return x exactly"
    for eps, x_adv in out.items():
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
        assert _norms(x_adv - x, norm).max().item() <= eps + (1e-6 * 255 if norm == "linf" else 1e-5)
        assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert _norms(out[eps_list[-1]] - x, norm).max().item() > eps_list[-1] / 2, "the attack did not move"
    assert [m.training for m in small_cnn.modules()] == modes
    state = small_cnn.state_dict()
    assert all(torch.equal(buffers[k], state[k]) for k in buffers), "parameters or BN buffers changed"
    assert [p.requires_grad for p in params] == flags
    assert torch.equal(params[0].grad, known)
    assert all(p.grad is None for p in params[1:])


# --- the contract under the L2 threat model --------------------------------------------------------

# L2 eps is the L2 norm of the whole perturbation in [0, 1] pixels, taken as given (no /255). One
# (name, config) per L2 variant; other attacks' L2 variants join this list.
L2_EPS = [0.0, 0.25, 0.5, 2.0]
L2_CONFIGS = [
    ("fab_t", fab.FabTConfig(norm="l2", targets=2, steps=10, restarts=2)),
    ("square", SquareConfig(norm="l2", queries=100)),
]
L2_IDS = [n for n, _ in L2_CONFIGS]


def _l2_norms(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


@pytest.mark.parametrize(("name", "config"), L2_CONFIGS, ids=L2_IDS)
@pytest.mark.slow
def test_l2_contract(name: str, config, small_cnn: nn.Module) -> None:
    # every sample's whole perturbation within the L2 ball, in [0, 1], the input untouched, eps 0 the identity;
    # eps 2 is well beyond any per-pixel 1/255 reading (2/255 would barely move an image)
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    small_cnn.train(True)
    modes = [m.training for m in small_cnn.modules()]
    x_before = x.clone()
    out = _run(name, small_cnn, x, labels, L2_EPS, config)
    assert list(out) == L2_EPS and torch.equal(x, x_before) and torch.equal(out[0.0], x)
    for eps, x_adv in out.items():
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
        assert _l2_norms(x_adv - x).max().item() <= eps + 1e-5, eps
        assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert _l2_norms(out[2.0] - x).max().item() > 0.5, "the attack did not move beyond 0.5"
    assert [m.training for m in small_cnn.modules()] == modes


@pytest.mark.parametrize(("name", "config"), L2_CONFIGS, ids=L2_IDS)
@pytest.mark.slow
def test_l2_batch_equals_one_by_one(name: str, config, small_cnn: nn.Module) -> None:
    # the first three labels are the clean predictions, the last the runner-up (fooled from the start):
    # fab_t fools some of the three at eps 3 and none at 1 (small_cnn's margins keep square from them)
    from robench.engine import attack_noise

    model = OneByOne(small_cnn).eval()
    x, _ = _inputs(4)
    with torch.no_grad():
        ranked = model(x).argsort(1, descending=True)
    labels = _labels(model, x, torch.cat([ranked[:3, 0], ranked[3:, 1]]))
    ids, eps = ["a", "b", "c", "d"], [1.0, 3.0]
    run = REGISTRY[name].run
    whole = dict(run(model, x, labels, eps, config, attack_noise(0, name, ids)))
    for i in range(4):
        single = dict(run(model, x[i : i + 1], _row(labels, i), eps, config, attack_noise(0, name, ids[i : i + 1])))
        for e in eps:
            assert torch.equal(single[e][0], whole[e][i]), (i, e)
    with torch.no_grad():
        fooled = torch.cat([model(whole[e]).argmax(1) != labels.true for e in eps])
    assert fooled.any() and not fooled.all(), "all or nothing fooled: the check would miss a branch"


@pytest.mark.parametrize(("name", "config"), L2_CONFIGS, ids=L2_IDS)
@pytest.mark.slow
def test_l2_early_stop_keeps_every_success_and_changes_nothing_else(name: str, config, small_cnn: nn.Module) -> None:
    from robench.engine import attack_noise

    x, y = _inputs(6, seed=4)
    small_cnn.eval()
    with torch.no_grad():
        y = small_cnn(x).argmax(1)  # every sample attacked; L2 eps 3 fools some under fab_t
    labels, run, eps = _labels(small_cnn, x, y), REGISTRY[name].run, [1.0, 3.0]
    noise = attack_noise(0, name, [str(i) for i in range(6)])
    full = dict(run(small_cnn, x, labels, eps, config, noise))
    early = dict(run(small_cnn, x, labels, eps, config, noise, early_stop=True))
    for e in eps:
        with torch.no_grad():
            fooled_full = small_cnn(full[e]).argmax(1) != y
            fooled_early = small_cnn(early[e]).argmax(1) != y
        assert (fooled_early | ~fooled_full).all(), e
        assert torch.equal(early[e][~fooled_early], full[e][~fooled_early]), e
        assert _l2_norms(early[e] - x).max().item() <= e + 1e-5


@pytest.mark.parametrize(("name", "config"), L2_CONFIGS, ids=L2_IDS)
def test_l2_stop_request_ends_the_attack_at_its_next_iteration(name: str, config, small_cnn: nn.Module) -> None:
    x, y = _inputs()
    model = StopAfter(small_cnn, 3)
    try:
        with pytest.raises(Terminated):
            _run(name, model, x, _labels(small_cnn, x, y), [1.0], config)
        assert model.calls <= 5
    finally:
        clear_stop()


@pytest.mark.parametrize(("name", "config"), L2_CONFIGS, ids=L2_IDS)
def test_l2_norm_field_is_checked(name: str, config) -> None:
    with pytest.raises(FieldError, match="norm must be linf | l2, got 'L2'"):
        REGISTRY[name].config(norm="L2")
    assert REGISTRY[name].config().norm == "linf"


class StopAfter(nn.Module):
    """The model, counting its forwards; the ``at``-th asks for a stop, as SIGTERM's handler or another thread does."""

    def __init__(self, model: nn.Module, at: int) -> None:
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            request_stop(Terminated())
        return self.model(x)


@pytest.mark.parametrize("name", sorted(n for n, a in REGISTRY.items() if not a.single_step))
def test_a_stop_request_ends_an_iterative_attack_at_its_next_iteration(name: str, small_cnn: nn.Module) -> None:
    # the request is made inside the attack's 3rd forward; at most one more iteration's forwards
    # (two for fab_t: gradient and check) may follow, where the config asks for hundreds
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    model = StopAfter(small_cnn, 3)
    try:
        with pytest.raises(Terminated):
            _run(name, model, x, labels, [16.0])
        assert model.calls <= 5
        assert stop_requested(), "the request stays until cleared: a caught stop is raised again"
    finally:
        clear_stop()
    assert not stop_requested()
    model.at = 0  # cleared, the same attack runs past the point where it stopped
    assert list(_run(name, model, x, labels, [16.0])) == [16.0] and model.calls > 8


class OneByOne(nn.Module):
    """The model run one sample at a time: CPU kernels round differently at other batch sizes, and
    attacks that use gradient values (apgd, fab_t) or compare losses would see those last bits;
    this wrapper takes the kernels out, so what is tested is the attack's own per-sample logic."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i : i + 1]) for i in range(len(x))])


@pytest.mark.parametrize(("name", "norm"), _variants("apgd_t-linf", "fab_t-linf", "apgd_t-l2"))
def test_batch_equals_one_by_one(name: str, norm: str, small_cnn: nn.Module) -> None:
    # the loss is summed over the batch and randomness comes per sample (SampleNoise), so a
    # sample's example does not depend on its neighbours. The labels are the clean predictions,
    # so every sample is attacked, and eps 128 lets the attacks fool some and not others.
    from robench.engine import attack_noise

    model = OneByOne(small_cnn).eval()
    x, _ = _inputs(4)
    with torch.no_grad():
        labels = _labels(model, x, model(x).argmax(1))
    ids, eps = ["a", "b", "c", "d"], ([4.0, 128.0] if norm == "linf" else [3.0, 5.0])
    run, config = REGISTRY[name].run, _variant_config(name, norm)
    whole = dict(run(model, x, labels, eps, config, attack_noise(0, name, ids)))
    for i in range(4):
        single = dict(run(model, x[i : i + 1], _row(labels, i), eps, config, attack_noise(0, name, ids[i : i + 1])))
        for e in eps:
            assert torch.equal(single[e][0], whole[e][i]), (i, e)
    with torch.no_grad():
        fooled = torch.cat([model(whole[e]).argmax(1) != labels.true for e in eps])
    if name in ("apgd", "apgd_t", "fab_t", "square"):  # their bookkeeping differs for fooled samples
        assert fooled.any() and not fooled.all(), "all or nothing fooled: the check would miss a branch"


@pytest.mark.parametrize("name", _registry("apgd_t", "fab_t"))
def test_early_stop_keeps_every_success_and_changes_nothing_else(name: str, small_cnn: nn.Module) -> None:
    # a sample follows the same path until its first misclassified iterate, which early stopping
    # keeps: it is fooled whenever the full run fools it, and an unfooled sample's example is the same
    from robench.engine import attack_noise

    x, y = _inputs(8, seed=4)
    labels = _labels(small_cnn, x, y)
    small_cnn.eval()
    run, config = REGISTRY[name].run, _config(name)
    noise = attack_noise(0, name, [str(i) for i in range(8)])
    full = dict(run(small_cnn, x, labels, EPS, config, noise))
    early = dict(run(small_cnn, x, labels, EPS, config, noise, early_stop=True))
    for eps in EPS:
        with torch.no_grad():
            fooled_full = small_cnn(full[eps]).argmax(1) != y
            fooled_early = small_cnn(early[eps]).argmax(1) != y
        assert (fooled_early | ~fooled_full).all(), eps
        assert torch.equal(early[eps][~fooled_early], full[eps][~fooled_early]), eps
        assert (early[eps] - x).abs().max().item() <= eps / 255 + 1e-6
        assert early[eps].min().item() >= 0.0 and early[eps].max().item() <= 1.0


def test_pgd_sample_noise_is_independent_of_batching_and_eps_list(small_cnn: nn.Module) -> None:
    from robench.attacks.base import SampleNoise
    from robench.engine import attack_noise

    x, y = _inputs(4)
    labels = _labels(small_cnn, x, y)
    noise = attack_noise(0, "pgd", ["a", "b", "c", "d"])
    assert noise == attack_noise(0, "pgd", ["a", "b", "c", "d"]) != attack_noise(1, "pgd", ["a", "b", "c", "d"])
    assert attack_noise(0, "pgd", ["a"]).seeds != attack_noise(0, "pgd2", ["a"]).seeds
    u = noise.uniform_like(x)
    assert u.shape == x.shape and u.min() >= -1 and u.max() <= 1 and u.std() > 0.5
    run = REGISTRY["pgd"].run
    whole = dict(run(small_cnn, x, labels, [4.0, 8.0], PgdConfig(), noise))
    alone = dict(run(small_cnn, x, labels, [8.0], PgdConfig(), noise))
    assert torch.equal(whole[8.0], alone[8.0])  # another eps list does not change eps 8
    for i in range(4):
        own = SampleNoise(noise.seeds[i : i + 1])
        one = dict(run(small_cnn, x[i : i + 1], _row(labels, i), [4.0, 8.0], PgdConfig(), own))
        assert torch.equal(one[4.0][0], whole[4.0][i]) and torch.equal(one[8.0][0], whole[8.0][i])


def test_pgd_random_start_is_seeded(small_cnn: nn.Module) -> None:
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    a = _run("pgd", small_cnn, x, labels, [8.0], seed=1)[8.0]
    b = _run("pgd", small_cnn, x, labels, [8.0], seed=1)[8.0]
    c = _run("pgd", small_cnn, x, labels, [8.0], seed=2)[8.0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one full-size step from x without a random start is exactly FGSM
    one = _run("pgd", small_cnn, x, labels, [8.0], PgdConfig(steps=1, step_size=8.0, random_start=False))[8.0]
    assert torch.equal(one, _run("fgsm", small_cnn, x, labels, [8.0])[8.0])


# --- exact results on the linear model, gradient by hand ----------------------------------------


def _hand_sign(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sign of d CE / dx for logits = W x + b: W^T (softmax - onehot), no autograd."""
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    p = torch.softmax(x.flatten(1) @ w.T + b, dim=1)
    return ((p - F.one_hot(target, w.shape[0]).to(p.dtype)) @ w).sign().view_as(x)


def _pixels(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows).view(len(rows), 1, 2, 2)


def test_linear_hand_sign_is_the_weight_difference(linear_model) -> None:
    # two classes: d CE / dx = p_other * (w_other - w_label); w1 - w0 = [-2, 3, -1, 3], never zero
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_hand_sign(linear_model, x, torch.zeros(5, dtype=torch.long)), _pixels(*[[-1, 1, -1, 1]] * 5))
    assert torch.equal(_hand_sign(linear_model, x, torch.ones(5, dtype=torch.long)), _pixels(*[[1, -1, 1, -1]] * 5))


def test_input_gradient_by_hand_and_zero_without_a_path(linear_model) -> None:
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1, 1])
    w, b = linear_model.fc.weight.detach(), linear_model.fc.bias.detach()
    p = torch.softmax(x.flatten(1) @ w.T + b, dim=1)
    by_hand = ((p - F.one_hot(y, 2).to(p.dtype)) @ w).view_as(x)
    grad = base.input_gradient(linear_model, x, y)
    assert torch.allclose(grad, by_hand, atol=1e-6) and torch.equal(base.gradient_sign(linear_model, x, y), grad.sign())
    for blind in (lambda z: linear_model(z.detach()), lambda z: linear_model(z) * 0 + linear_model(z.detach())):
        # no path from x to the loss, or a path that contributes nothing: zero gradient, not an error
        assert torch.equal(base.input_gradient(blind, x, y), torch.zeros_like(x))


def test_fgsm_and_step_ll_literal(linear_model) -> None:
    # dyadic pixels and eps = 255/64, a step of exactly 1/64: every expected value below is exact.
    # A: logits [-1.627, 1.384] -> predicted 1, least likely 0.  B: [1.452, -1.459] -> predicted 0, least likely 1.
    x = _pixels([1 / 128, 127 / 128, 0.5, 0.25], [127 / 128, 1 / 128, 0.75, 0.0])
    labels = _labels(linear_model, x, torch.tensor([0, 1]))
    assert labels.predicted.tolist() == [1, 0] and labels.least_likely.tolist() == [0, 1]
    eps = [0.0, 255 / 64, 255.0]

    fgsm = _run("fgsm", linear_model, x, labels, eps)
    # A up the loss of class 0 moves by [-1, 1, -1, 1]/64; B up the loss of class 1 by [1, -1, 1, -1]/64
    assert torch.equal(fgsm[0.0], x)
    assert torch.equal(fgsm[255 / 64], _pixels([0.0, 1.0, 0.484375, 0.265625], [1.0, 0.0, 0.765625, 0.0]))
    assert torch.equal(fgsm[255.0], _pixels([0, 1, 0, 1], [1, 0, 1, 0]))

    step_ll = _run("step_ll", linear_model, x, labels, eps)
    # down the loss of the least-likely class: A toward class 0, B toward class 1
    assert torch.equal(step_ll[255 / 64], _pixels([0.0234375, 0.9765625, 0.515625, 0.234375],
                                                 [0.9765625, 0.0234375, 0.734375, 0.015625]))
    assert torch.equal(step_ll[255.0], _pixels([1, 0, 1, 0], [0, 1, 0, 1]))


@pytest.mark.parametrize("eps", [1.0, 4.0, 16.0, 100.0])
def test_fgsm_and_step_ll_equal_hand_gradient(eps: float, linear_model) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 2, 2, generator=g)
    x[:4, 0, 0, 0], x[4:, 0, 1, 1] = 0.002, 0.998  # near the bounds: clipping is exercised
    y = torch.randint(0, 2, (8,), generator=g)
    labels = _labels(linear_model, x, y)
    step = eps / 255
    for kind in ("true", "predicted"):
        moved = x + step * _hand_sign(linear_model, x, labels.pick(kind))
        assert ((moved < 0) | (moved > 1)).any(), "no pixel is clipped: the test would miss clipping"
        assert torch.equal(_run("fgsm", linear_model, x, labels, [eps], FgsmConfig(kind))[eps], moved.clamp(0, 1))
    aimed = dataclasses.replace(labels, goal=1 - y)  # label target: down the loss of the goal class
    moved = x - step * _hand_sign(linear_model, x, 1 - y)
    assert torch.equal(_run("fgsm", linear_model, x, aimed, [eps], FgsmConfig("target"))[eps], moved.clamp(0, 1))
    moved = x - step * _hand_sign(linear_model, x, labels.least_likely)
    assert ((moved < 0) | (moved > 1)).any()
    assert torch.equal(_run("step_ll", linear_model, x, labels, [eps])[eps], moved.clamp(0, 1))


@pytest.mark.parametrize(("iterative_name", "single_name"), [("bim", "fgsm"), ("iter_ll", "step_ll")])
def test_iterative_on_linear_model_ends_at_the_single_step(iterative_name: str, single_name: str, linear_model) -> None:
    # the linear model's gradient sign never changes along the path, and the paper schedule takes more
    # steps of 1/255 than eps, so each pixel walks to the eps-ball (or [0, 1]) edge and stops there:
    # the projection's x +- eps is the same float as the single step's x + eps * sign.
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    x[0, 0, 0, 0], x[1, 0, 1, 1] = 0.01, 0.99
    labels = _labels(linear_model, x, torch.tensor([0, 1, 0, 1, 0, 1]))
    eps = [4.0, 8.0, 16.0]
    assert all(paper_steps(e) > e for e in eps)
    many = _run(iterative_name, linear_model, x, labels, eps)
    one = _run(single_name, linear_model, x, labels, eps)
    for e in eps:
        assert torch.equal(many[e], one[e]), e


# --- labels -------------------------------------------------------------------------------------


AIMED = {"fgsm": FgsmConfig("target"), "bim": BimConfig("target"), "pgd": PgdConfig("target", steps=3)}


@pytest.mark.parametrize(("aimed", "least_likely"), [("fgsm", "step_ll"), ("bim", "iter_ll")])
def test_label_target_at_the_least_likely_class_is_the_papers_ll_attack(aimed: str, least_likely: str,
                                                                        small_cnn: nn.Module) -> None:
    # one path (aim: descend the goal's loss): with the least-likely class as the goal, step l.l. and iter l.l. exactly
    x, y = _inputs(8)
    labels = _labels(small_cnn, x, y)
    goal = dataclasses.replace(labels, goal=labels.least_likely)
    ours, paper = _run(aimed, small_cnn, x, goal, EPS, AIMED[aimed]), _run(least_likely, small_cnn, x, labels, EPS)
    assert all(torch.equal(ours[e], paper[e]) for e in EPS)
    other = dataclasses.replace(labels, goal=(labels.least_likely + 1) % 5)  # another goal: another example
    assert not torch.equal(_run(aimed, small_cnn, x, other, [8.0], AIMED[aimed])[8.0], paper[8.0])


@pytest.mark.parametrize("name", sorted(AIMED))
def test_aimed_attacks_keep_the_contract_and_descend_the_goals_loss(name: str, small_cnn: nn.Module) -> None:
    from robench.engine import attack_noise

    model, (x, y) = OneByOne(small_cnn).eval(), _inputs(6)
    labels = _labels(model, x, y)
    aimed = dataclasses.replace(labels, goal=(labels.predicted + 1 + torch.arange(6) % 4) % 5)  # never predicted
    before, run, ids = x.clone(), REGISTRY[name].run, [str(i) for i in range(6)]
    out = dict(run(model, x, aimed, EPS, AIMED[name], attack_noise(0, name, ids)))
    assert torch.equal(x, before) and torch.equal(out[0.0], x)
    for e, x_adv in out.items():
        assert (x_adv - x).abs().max().item() <= e / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    for i in range(6):  # batch == one by one
        one = dict(run(model, x[i : i + 1], _row(aimed, i), [16.0], AIMED[name], attack_noise(0, name, ids[i:i + 1])))
        assert torch.equal(one[16.0][0], out[16.0][i]), i
    with torch.no_grad():  # small_cnn predicts one class everywhere; the goal's loss is what an aimed step lowers
        loss = [F.cross_entropy(model(out[e]), aimed.goal, reduction="none") for e in (0.0, 16.0)]
    assert (loss[1] < loss[0]).all(), loss
    with pytest.raises(RobenchError, match="label 'target' needs each sample's target class"):
        list(run(model, x, labels, [8.0], AIMED[name], attack_noise(0, name, ids)))


def test_the_attacks_that_aim_are_those_whose_label_takes_target() -> None:
    import typing

    for name, attack in REGISTRY.items():
        hints = typing.get_type_hints(attack.config)
        assert ("label" in hints and "target" in typing.get_args(hints["label"])) == attack.aims, name
    assert {n for n, a in REGISTRY.items() if a.aims} == {"fgsm", "bim", "pgd", "mi_fgsm", "ni_fgsm", "di_fgsm",
                                                          "ti_fgsm", "vmi_fgsm"}


def test_random_goals_are_reproducible_never_the_label_and_uniform_over_the_others() -> None:
    from robench.engine import goal_noise

    n, classes = 4000, 5
    ids = [f"img{i}" for i in range(n)]
    y = torch.arange(n) % classes
    logits = torch.zeros(n, classes)
    goal = base.goal_classes("random", logits, y, goal_noise(7, ids))
    assert not (goal == y).any()
    assert torch.equal(goal, base.goal_classes("random", logits, y, goal_noise(7, ids)))  # same seed and ids
    part = base.goal_classes("random", logits[10:20], y[10:20], goal_noise(7, ids[10:20]))
    assert torch.equal(part, goal[10:20])  # a sample's goal does not depend on its batch
    assert not torch.equal(goal, base.goal_classes("random", logits, y, goal_noise(8, ids)))  # another seed
    offsets = torch.bincount((goal - y) % classes, minlength=classes)  # 1 .. 4 steps past the label, 1000 each
    assert offsets[0] == 0 and (offsets[1:] - n / 4).abs().max() < 4 * (n / 4 * 3 / 4) ** 0.5  # within 4 sd


def test_least_likely_goal_is_the_argmin_over_all_classes_even_the_label() -> None:
    logits = torch.tensor([[3.0, -2.0, 1.0], [-5.0, 0.0, 2.0], [0.5, 0.25, -1.0]])
    y = torch.tensor([0, 0, 1])  # sample 1's lowest class is its label: the paper keeps it, torchattacks would not
    goal = base.goal_classes("least_likely", logits, y, base.SampleNoise((1, 2, 3)))
    assert goal.tolist() == [1, 0, 2]



def test_step_ll_targets_argmin_of_clean_logits(small_cnn: nn.Module) -> None:
    x, y = _inputs(8)
    small_cnn.eval()
    with torch.no_grad():
        logits = small_cnn(x)
    labels = Labels.from_logits(logits, y)
    ll = logits.argmin(1)
    assert torch.equal(labels.least_likely, ll) and torch.equal(labels.predicted, logits.argmax(1))

    def down(target: torch.Tensor) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(small_cnn(xg), target, reduction="sum"), xg)
        return (x - 8 / 255 * grad.sign()).clamp(0, 1)

    ours = _run("step_ll", small_cnn, x, labels, [8.0])[8.0]
    assert torch.equal(ours, down(ll))
    second = logits.topk(2, dim=1, largest=False).indices[:, 1]  # the second least likely: must differ
    assert not torch.equal(ours, down(second))


def test_fgsm_predicted_equals_true_where_prediction_is_right(small_cnn: nn.Module) -> None:
    x, y = _inputs(12)
    labels = _labels(small_cnn, x, y)
    y = labels.predicted.clone()
    y[::2] = (y[::2] + 1) % 5  # half right, half wrong, by construction
    labels = Labels(y, labels.predicted, labels.least_likely)
    true = _run("fgsm", small_cnn, x, labels, [8.0], FgsmConfig("true"))[8.0]
    pred = _run("fgsm", small_cnn, x, labels, [8.0], FgsmConfig("predicted"))[8.0]
    right = labels.predicted == y
    assert right.sum() == 6
    assert torch.equal(true[right], pred[right])
    assert all(not torch.equal(true[i], pred[i]) for i in torch.nonzero(~right).flatten())


# --- the shared sweep and the schedule ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config"),
    [("fgsm", FgsmConfig()), ("step_ll", StepLLConfig()), ("bim", BimConfig()), ("iter_ll", IterLLConfig()),
     ("bim", BimConfig(step_size=0.37)), ("bim", BimConfig(steps=7)), ("iter_ll", IterLLConfig(step_size=3.0))],
    ids=["fgsm", "step_ll", "bim", "iter_ll", "bim-step-0.37", "bim-7-steps", "iter_ll-step-3"],
)
def test_shared_sweep_equals_per_eps_calls(name: str, config, small_cnn: nn.Module) -> None:
    """One call over many eps gives, bit for bit, what one call per eps gives (bim and iter_ll share a trunk)."""
    x, y = _inputs(3)
    labels = _labels(small_cnn, x, y)
    sweep_eps = [*SWEEP, 0.0, 3.5, 16.0]
    sweep = _run(name, small_cnn, x, labels, sweep_eps, config)
    for eps in sweep_eps:
        assert torch.equal(sweep[eps], _run(name, small_cnn, x, labels, [eps], config)[eps]), eps
    assert not torch.equal(sweep[2.0], sweep[16.0])


def test_paper_schedule() -> None:
    assert [paper_steps(e) for e in SWEEP] == [2, 5, 10, 20]
    assert paper_steps(0.0) == 0
    for e in [1.0, 3.0, 5.0, 6.0, 7.0, 12.0, 20.0, 32.0, 64.0]:
        assert paper_steps(e) == math.floor(min(e + 4, 1.25 * e)), e


@pytest.fixture
def gradient_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count gradients: the attack modules call gradient_step (step_ll: gradient_sign) by their own name."""
    calls: list[int] = []

    def counting(real):
        def count(model, x, target, *norm):
            calls.append(len(x))
            return real(model, x, target, *norm)
        return count

    monkeypatch.setattr(iterative, "gradient_step", counting(base.gradient_step))
    monkeypatch.setattr(single_step, "gradient_step", counting(base.gradient_step))
    monkeypatch.setattr(single_step, "gradient_sign", counting(base.gradient_sign))
    return calls


@pytest.mark.parametrize(
    ("name", "eps", "expected"),
    [
        ("fgsm", SWEEP, range(1, 2)),
        ("step_ll", SWEEP, range(1, 2)),
        # eps 16's 20 steps are the trunk; eps 2 finishes on it (2 steps); eps 4 and 8 ride it for at least
        # 3 and 7 steps and at most 4 and 8 (until a step could leave their ball), then finish alone
        ("bim", SWEEP, range(20 + 0 + 0 + 1, 20 + 0 + 1 + 2 + 1)),
        ("iter_ll", SWEEP, range(21, 24)),
        ("bim", [2.0, 16.0], range(20, 21)),
        ("bim", [0.0, 4.0], range(5, 6)),  # eps 0 costs nothing
        ("bim", [2.0], range(2, 3)),
        ("pgd", SWEEP, range(40, 41)),  # 4 eps x 10 steps: random starts differ per eps, nothing shared
    ],
)
def test_gradient_count(name: str, eps: list[float], expected: range, gradient_calls, small_cnn: nn.Module) -> None:
    x, y = _inputs(2)
    labels = _labels(small_cnn, x, y)
    _run(name, small_cnn, x, labels, eps)
    assert len(gradient_calls) in expected
    assert len(gradient_calls) <= REGISTRY[name].budget(REGISTRY[name].config(), eps, 10) // 2
    assert set(gradient_calls) == {2}, "every gradient is over the whole batch"


def test_explicit_steps_override_schedule(gradient_calls, small_cnn: nn.Module) -> None:
    x, y = _inputs(2)
    _run("bim", small_cnn, x, _labels(small_cnn, x, y), [2.0, 16.0], BimConfig(steps=3))
    assert len(gradient_calls) in (3, 4)  # eps 2 leaves the trunk after step 1 or 2, then finishes alone


# --- FAB-T: the projection, the targets, the closed form of a linear model ------------------------


def _rows(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_fab_projection_by_hand() -> None:
    # dyadic cases: free (level 1/8 on both), box binding (the first pixel stops at 1, the other goes on
    # to level 1/4), a zero weight that never moves, a hyperplane beyond the box (the nearest corner)
    t = _rows([0.5, 0.5], [0.875, 0.5], [0.25, 0.5], [0.5, 0.5], [0.5, 0.5])
    w = _rows([1, -3], [1, 1], [2, 0], [1, 1], [-1, 1])
    b = torch.tensor([-0.5, 1.75, 1.0, 3.0, 0.5], dtype=torch.float64)
    d = fab.project_linf(t, w, b)
    assert torch.equal(d, _rows([0.125, -0.125], [0.125, 0.25], [0.25, 0.0], [0.5, 0.5], [-0.25, 0.25]))


def test_fab_projection_is_the_linear_program_optimum() -> None:
    # min s subject to |d_i| <= s, w . (t + d) = b, 0 <= t + d <= 1, solved by scipy's HiGHS
    linprog = pytest.importorskip("scipy.optimize").linprog
    g = torch.Generator().manual_seed(7)
    t, w = torch.rand(40, 6, generator=g, dtype=torch.float64), torch.randn(40, 6, generator=g, dtype=torch.float64)
    w[::5, 0] = 0.0
    b = (w * t).sum(1) + torch.randn(40, generator=g, dtype=torch.float64)
    d = fab.project_linf(t, w, b)
    binding = 0
    for i in range(40):
        eye = torch.eye(6, dtype=torch.float64)
        a_ub = torch.cat([torch.cat([eye, -torch.ones(6, 1)], 1), torch.cat([-eye, -torch.ones(6, 1)], 1)])
        box = [*zip((-t[i]).tolist(), (1 - t[i]).tolist(), strict=True), (0, None)]
        res = linprog([0] * 6 + [1], A_ub=a_ub.tolist(), b_ub=[0] * 12, A_eq=[[*w[i].tolist(), 0]],
                      b_eq=[float(b[i] - w[i] @ t[i])], bounds=box)
        if res.status != 0:  # the hyperplane misses the box: the corner nearest it
            assert torch.allclose(d[i], torch.where(w[i] * (b[i] - w[i] @ t[i]) > 0, 1 - t[i], -t[i]) * (w[i] != 0))
            continue
        z = t[i] + d[i]
        assert abs(float(w[i] @ z - b[i])) < 1e-9 and z.min() >= 0 and z.max() <= 1 and d[i][w[i] == 0].eq(0).all()
        assert d[i].abs().max().item() == pytest.approx(res.fun, abs=1e-7)
        binding += bool(((z == 0) | (z == 1)).any() and d[i].abs().max() > 0)
    assert binding >= 5, "the box never binds: the test would miss it"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fab_stable_order_is_a_stable_argsort(dtype: torch.dtype) -> None:
    room = torch.tensor([[0.5, 0.0, 0.5, -0.0, 1.0, 0.25], [3.0, 2.0, 1.0, 0.0, 0.0, 2.0]], dtype=dtype)
    assert fab.stable_order(room).tolist() == [[1, 3, 5, 0, 2, 4], [3, 4, 2, 1, 5, 0]]  # ties (and -0.0) by position
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 1023, 1024, 3072):  # many ties: 17 levels, and zeros
        t = (torch.randint(0, 17, (5, d), generator=g).to(dtype) / 16) * (torch.rand(5, d, generator=g) > 0.3)
        assert torch.equal(fab.stable_order(t), t.sort(dim=1, stable=True).indices)


def test_fab_targets_are_the_most_likely_wrong_classes_capped() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0, 2.0], [9.0, 5.0, 1.0, 3.0, 2.0]])
    y = torch.tensor([1, 1])  # the second sample is misclassified: its top class 0 is a target
    assert base.ranked_targets(logits, y, 2).tolist() == [[3, 4], [0, 3]]
    assert base.ranked_targets(logits, y, 9).tolist() == [[3, 4, 2, 0], [0, 3, 4, 2]]  # classes - 1 at most


def test_fab_refuses_two_classes(linear_model) -> None:
    x = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RobenchError, match="at least 3 classes to choose a target class; the model has 2"):
        _run("fab_t", linear_model, x, _labels(linear_model, x, torch.tensor([0, 1])), [8.0])


def test_fab_reaches_the_linear_boundary_at_its_closed_form_distance() -> None:
    # class 0 against class 1 of logits Wx + b: the smallest L-inf step to the boundary is
    # margin / |w1 - w0|_1 along sign(w1 - w0) (the box does not bind: pixels in [0.4, 0.6], steps < 0.4).
    # FAB's first iterate lands at eta times it; shrunk by beta, the next lands exactly at
    # 1.05 - 0.05 * c * (1 - alpha) times it, c = beta * eta, alpha = (1 - c) / (2 - c): its best.
    from conftest import Linear

    model = Linear(torch.tensor([[0.0] * 4, [1.0, -1.0, 0.5, -0.5], [-1.0] * 4]), torch.tensor([0.0, -0.75, -4.0]))
    x = 0.4 + 0.2 * torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = _labels(model, x, torch.zeros(6, dtype=torch.long))
    assert labels.predicted.eq(0).all() and labels.least_likely.eq(2).all()
    smallest = (labels.logits[:, 0] - labels.logits[:, 1]) / 3
    c = 0.9 * 1.05
    found = 1.05 - 0.05 * c * (1 - (1 - c) / (2 - c))
    below, above = 0.999 * 255 * smallest.min().item(), 1.01 * 255 * smallest.max().item()
    out = _run("fab_t", model, x, labels, [below, above], fab.FabTConfig(steps=20))
    step = (out[above] - x).flatten(1)
    assert torch.allclose(step.abs().amax(1), found * smallest, rtol=1e-5)
    assert torch.equal(step.sign(), torch.tensor([[1.0, -1.0, 1.0, -1.0]] * 6))
    with torch.no_grad():
        assert model(out[above]).argmax(1).eq(1).all() and model(out[below]).argmax(1).eq(0).all()


def test_fab_l2_projection_by_hand() -> None:
    # d = clip(lam w, -t, 1 - t) reaching the hyperplane: free (lam 1/4; lam 1/20 with weights 1, -3), the box
    # binding (the first pixel stops at 1, the other goes on), a zero weight that never moves, a missed hyperplane
    t = _rows([0.5, 0.5], [0.5, 0.5], [0.875, 0.5], [0.25, 0.5], [0.5, 0.5])
    w = _rows([1, 1], [1, -3], [1, 1], [2, 0], [1, 1])
    b = torch.tensor([1.5, -0.5, 1.75, 1.0, 3.0], dtype=torch.float64)
    d = fab.project_l2(t, w, b)
    torch.testing.assert_close(d, _rows([0.25, 0.25], [0.05, -0.15], [0.125, 0.25], [0.25, 0.0], [0.5, 0.5]))


def test_fab_l2_projection_is_the_quadratic_program_optimum() -> None:
    # min |d|_2 subject to w . (t + d) = b, 0 <= t + d <= 1. By the KKT conditions the optimum is
    # d_j = clip(lam * w_j, -t_j, 1 - t_j) for the lam where w . d = b - w . t; that sum grows with lam, so
    # 200 bisections find it in float64 (a reference independent of project_l2's sorted breakpoints;
    # scipy's SLSQP did not converge on every CPU at this tolerance)
    g = torch.Generator().manual_seed(7)
    t, w = torch.rand(30, 5, generator=g, dtype=torch.float64), torch.randn(30, 5, generator=g, dtype=torch.float64)
    w[::5, 0] = 0.0
    b = (w * t).sum(1) + 0.5 * torch.randn(30, generator=g, dtype=torch.float64)
    d = fab.project_l2(t, w, b)
    binding = 0
    for i in range(30):
        need = float(b[i] - w[i] @ t[i])
        corner = torch.where(w[i] * need > 0, 1 - t[i], -t[i]) * (w[i] != 0)  # the box's point nearest the plane
        if abs(float(w[i] @ corner)) < abs(need):  # the hyperplane misses the box
            assert torch.allclose(d[i], corner)
            continue

        def step(lam: float, i: int = i) -> torch.Tensor:
            return torch.minimum(torch.maximum(lam * w[i], -t[i]), 1 - t[i])

        lo, hi = -1.0, 1.0
        while float(w[i] @ step(lo)) > need:
            lo *= 2
        while float(w[i] @ step(hi)) < need:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if float(w[i] @ step(mid)) < need else (lo, mid)
        best = step((lo + hi) / 2)
        z = t[i] + d[i]
        assert abs(float(w[i] @ z - b[i])) < 1e-9 and z.min() >= 0 and z.max() <= 1 and d[i][w[i] == 0].eq(0).all()
        assert d[i].norm().item() == pytest.approx(best.norm().item(), abs=1e-9)
        torch.testing.assert_close(d[i], best, rtol=0, atol=1e-9)
        binding += bool(((z == 0) | (z == 1)).any() and d[i].norm() > 0)
    assert binding >= 5, "the box never binds: the test would miss it"


def test_fab_l2_reaches_the_linear_boundary_at_its_closed_form_distance() -> None:
    # the L2 twin of the L-inf case above: the smallest L2 step to the boundary of class 0 against 1 is
    # margin / |w1 - w0|_2 along (w1 - w0) / |w1 - w0|_2; the iterates stay on that line, so FAB's best is
    # the same multiple of it. eps is an L2 norm in [0, 1] pixels: no /255
    from conftest import Linear

    w1 = torch.tensor([1.0, -1.0, 0.5, -0.5])
    model = Linear(torch.stack([torch.zeros(4), w1, -torch.ones(4)]), torch.tensor([0.0, -0.3, -4.0]))
    x = 0.4 + 0.2 * torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = _labels(model, x, torch.zeros(6, dtype=torch.long))
    assert labels.predicted.eq(0).all()
    smallest = (labels.logits[:, 0] - labels.logits[:, 1]) / w1.norm()
    c = 0.9 * 1.05
    found = 1.05 - 0.05 * c * (1 - (1 - c) / (2 - c))
    below, above = 0.999 * smallest.min().item(), 1.01 * smallest.max().item()
    out = _run("fab_t", model, x, labels, [below, above], fab.FabTConfig(steps=20, norm="l2"))
    step = (out[above] - x).flatten(1)
    assert (x.flatten(1) + 1.05 * step).max() < 1 and (x.flatten(1) + 1.05 * step).min() > 0, "the box binds"
    torch.testing.assert_close(step.norm(dim=1), found * smallest, rtol=1e-5, atol=0)
    torch.testing.assert_close(step / step.norm(dim=1, keepdim=True), (w1 / w1.norm()).expand(6, 4), rtol=0, atol=1e-5)
    with torch.no_grad():
        assert model(out[above]).argmax(1).eq(1).all() and model(out[below]).argmax(1).eq(0).all()


class _OneByOne(nn.Module):
    """Runs its net on one sample at a time: CPU conv and linear kernels round differently for
    another batch size, so only such a model tells FAB's own batch invariance from the kernels'."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i : i + 1]) for i in range(len(x))])


def test_fab_batch_invariance_and_early_stop_with_every_sample_attacked(small_cnn: nn.Module) -> None:
    # the registry-wide tests attack few samples (small_cnn misclassifies most of _inputs): here every
    # sample is classified right (labels = predictions) and eps 100 and 160 fool some and all
    from robench.engine import attack_noise

    model, (x, _) = _OneByOne(small_cnn).eval(), _inputs(6, seed=4)
    labels, eps = _labels(model, x, _labels(model, x, torch.zeros(6, dtype=torch.long)).predicted), [100.0, 160.0]
    config, ids = fab.FabTConfig(targets=2, steps=10, restarts=2), [str(i) for i in range(6)]
    whole = dict(fab.fab_t(model, x, labels, eps, config, attack_noise(0, "fab_t", ids)))
    early = dict(fab.fab_t(model, x, labels, eps, config, attack_noise(0, "fab_t", ids), early_stop=True))
    for i in range(6):
        noise = attack_noise(0, "fab_t", ids[i : i + 1])
        one = dict(fab.fab_t(model, x[i : i + 1], _row(labels, i), eps, config, noise))
        assert all(torch.equal(one[e][0], whole[e][i]) for e in eps), i
    with torch.no_grad():
        fooled = {e: model(whole[e]).argmax(1) != labels.true for e in eps}
        assert 0 < fooled[100.0].sum() < 6 and fooled[160.0].all()
        for e in eps:
            assert torch.equal(model(early[e]).argmax(1) != labels.true, fooled[e])
            assert torch.equal(early[e][~fooled[e]], whole[e][~fooled[e]])
            assert not torch.equal(early[e][fooled[e]], whole[e][fooled[e]])  # early stop kept a first success


# --- bad arguments ------------------------------------------------------------------------------


def test_unknown_attack_suggests_the_close_name() -> None:
    with pytest.raises(RobenchError, match="fgsm") as info:
        get_attack("fgsmm")
    assert "fgsmm" in str(info.value)
    with pytest.raises(RobenchError, match="known: fgsm, step_ll, bim, iter_ll, pgd, apgd, apgd_t, fab_t, square, "
                                           "mi_fgsm, ni_fgsm, di_fgsm, ti_fgsm, vmi_fgsm"):
        get_attack("zzz")
    assert get_attack("pgd") is REGISTRY["pgd"]


# --- what the registry says about each attack ---------------------------------------------------


def test_registry_carries_kind_objective_and_counterpart() -> None:
    assert {n for n, a in REGISTRY.items() if a.single_step} == {"fgsm", "step_ll"}
    assert {n for n, a in REGISTRY.items() if a.targeted} == {"step_ll", "iter_ll", "apgd_t", "fab_t"}
    assert {n: a.counterpart for n, a in REGISTRY.items()} == {
        "fgsm": None, "step_ll": None, "bim": "fgsm", "iter_ll": "step_ll", "pgd": "fgsm", "apgd": None,
        "apgd_t": None, "fab_t": None, "square": None, "mi_fgsm": None, "ni_fgsm": None, "di_fgsm": None,
        "ti_fgsm": None, "vmi_fgsm": None}  # transfer attacks: weaker white-box than FGSM is no sign of masking
    assert {n for n, a in REGISTRY.items() if a.black_box} == {"square"}
    assert {n for n, a in REGISTRY.items() if a.min_classes > 2} == {"apgd_t", "fab_t"}
    for attack in REGISTRY.values():  # a counterpart is a single-step attack with the same objective
        if attack.counterpart is not None:
            one = REGISTRY[attack.counterpart]
            assert one.single_step and not attack.single_step and one.targeted == attack.targeted


# --- square: the schedule, the vertices of the ball, forwards only, queries ---------------------


def test_square_schedule_is_the_papers_and_rescales_with_the_budget() -> None:
    # 10000 queries: p_init until iteration 10, then halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
    paper = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8, 501: 16, 1000: 16, 1001: 32,
             2000: 32, 2001: 64, 4000: 64, 4001: 128, 6000: 128, 6001: 256, 8000: 256, 8001: 512, 9998: 512}
    for i, div in paper.items():
        assert square_share(i, 10000, 0.8) == 0.8 / div, i
    # 1000 queries: iteration i counts as int(i / 1000 * 10000) = 10 i of the paper's
    rescaled = {1: 1, 2: 2, 5: 2, 6: 4, 20: 4, 21: 8, 100: 16, 101: 32, 801: 512, 999: 512}
    for i, div in rescaled.items():
        assert square_share(i, 1000, 0.5) == 0.5 / div, i
    # side = round(sqrt(p h w)) within [1, min(h, w) - 1]
    assert [square_side(p, 32, 32) for p in (0.8, 0.4, 0.05, 0.8 / 512)] == [29, 20, 7, 1]
    assert square_side(1.0, 6, 6) == 5 and square_side(1e-6, 6, 6) == 1 and square_side(1.0, 1, 1) == 1


def test_square_config_checks_its_fields() -> None:
    # no query would leave x unchanged and report the model robust: refused
    for bad in ({"queries": 0}, {"queries": -1}, {"p_init": 0.0}, {"p_init": 1.5}):
        with pytest.raises(FieldError):
            SquareConfig(**bad)


def test_square_lives_on_the_vertices_of_the_ball(small_cnn: nn.Module) -> None:
    # every pixel is x + eps or x - eps (the same floats), unless [0, 1] clips it
    x, y = _inputs(6)
    out = _run("square", small_cnn, x, _labels(small_cnn, x, y), [4.0, 16.0])
    for eps, x_adv in out.items():
        e = eps / 255
        up, down = x + e, x - e
        assert ((x_adv == up) | (x_adv == down) | (x_adv == up.clamp(max=1)) | (x_adv == down.clamp(min=0))).all()
        inside = (up <= 1) & (down >= 0)
        assert ((x_adv == up) | (x_adv == down))[inside].all()
        assert ((x_adv > x) & inside).any() and ((x_adv < x) & inside).any()


class _Recording(nn.Module):
    """Wraps a model: records each forward's batch size and fails if autograd could ever backpropagate."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and not x.requires_grad, "square must never build a graph"
        self.sizes.append(len(x))
        return self.model(x)


def test_square_makes_no_backward_and_stays_in_budget() -> None:
    # a seeded linear model over small_cnn's inputs: at eps 32 some samples fall mid-run, some hold out
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(108, 5))
    net[1].weight.grad = known = torch.ones_like(net[1].weight)
    x, _ = _inputs(8)
    model = _Recording(net).eval()
    with torch.no_grad():
        y = net(x).argmax(1)  # every sample right when clean
    model.sizes.clear()
    with base.attack_mode(model):
        x_adv, spent = square_search(model, x, y, 32 / 255, SquareConfig(queries=60), base.sample_noise(None, 8))
    assert sum(model.sizes) == int(spent.sum()) and len(model.sizes) <= 60
    assert spent.max() <= 60 and spent.min() >= 1
    with torch.no_grad():
        fooled = net(x_adv).argmax(1) != y
    assert torch.equal(fooled, spent < 60), "a sample is queried until fooled or out of budget"
    assert (~fooled).any() and ((spent > 1) & fooled).any()
    assert torch.equal(net[1].weight.grad, known) and net[1].bias.grad is None


class _Constant(nn.Module):
    """Logits [0, 1] whatever the input: a label-1 sample is never fooled, a label-0 one always is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 1.0]).expand(len(x), 2)


def test_square_stops_querying_a_fooled_sample() -> None:
    x, _ = _inputs(4)
    y = torch.tensor([0, 1, 0, 1])
    model = _Recording(_Constant())
    with base.attack_mode(model):
        x_adv, spent = square_search(model, x, y, 8 / 255, SquareConfig(queries=25), base.sample_noise(None, 4))
    assert spent.tolist() == [1, 25, 1, 25]  # the start counts as a query
    assert model.sizes == [4] + [2] * 24


def test_square_l2_bumps_by_hand() -> None:
    # eta (eq. 7): concentric squares of weight 1, 1/4, 1/9, ... summed from the outside in, unit norm
    ring = torch.tensor([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25], [0.25, 0.25, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(bumps(3), ring / ring.norm())
    upper, lower = torch.tensor([0.25, 1.25, 0.25]), torch.tensor([[0.25] * 3, [0.25, 1.25, 0.25]])
    halves = torch.cat([upper[None] / upper.norm(), -lower / lower.norm()]).double()
    torch.testing.assert_close(two_bumps(3), halves / halves.norm())
    assert two_bumps(1).tolist() == [[-1.0]]
    for s in (4, 5, 9):
        assert two_bumps(s).norm().item() == pytest.approx(1.0) and two_bumps(s)[: s // 2].min() > 0


def test_square_l2_update_moves_mass_and_keeps_the_norm() -> None:
    # away from the box bounds nothing clips: the start lies on the eps-sphere, and Algorithm 3 keeps a
    # candidate there, emptying W2 outside W1; every pixel outside both windows keeps its direction, scaled
    # by one factor per sample when the whole perturbation is brought back to norm eps (the authors' code)
    n, e = 3, 0.5
    x = torch.full((n, 3, 8, 8), 0.5)
    noise = base.sample_noise(None, n)
    start = l2_start(noise, x, e)
    torch.testing.assert_close((start - x).flatten(1).norm(dim=1), torch.full((n,), e))
    # W1 at the top left, W2 at the bottom right, no transpose, signs -, +, +
    u = torch.tensor([[0.0, 0.0, 0.99, 0.99, 0.2, 0.1, 0.6, 0.9]] * n, dtype=torch.float64)
    cand = l2_propose(x, start, e, u, 3)
    torch.testing.assert_close((cand - x).flatten(1).norm(dim=1), torch.full((n,), e))
    assert cand[:, :, 5:, 5:].eq(0.5).all()
    moved, before = (cand - x)[:, :, 3:5].flatten(1), (start - x)[:, :, 3:5].flatten(1)
    factor = moved.norm(dim=1) / before.norm(dim=1)
    torch.testing.assert_close(moved, before * factor[:, None])
    assert not torch.equal(cand[:, :, :3, :3], start[:, :, :3, :3])


def test_square_l2_makes_no_backward_and_stays_in_budget() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(108, 5))
    x, _ = _inputs(8)
    model = _Recording(net).eval()
    with torch.no_grad():
        y = net(x).argmax(1)
    model.sizes.clear()
    config = SquareConfig(queries=40, norm="l2")
    with base.attack_mode(model):
        x_adv, spent = l2_search(model, x, y, 2.0, config, base.sample_noise(None, 8))
    assert sum(model.sizes) == int(spent.sum()) <= REGISTRY["square"].budget(config, [2.0], 5) * 8
    with torch.no_grad():
        fooled = net(x_adv).argmax(1) != y
    # a sample not fooled spends every query; one that stopped early was fooled (at query 40 it may be either)
    assert (spent[~fooled] == 40).all() and fooled[spent < 40].all()
    assert (~fooled).any() and ((spent > 1) & fooled).any()
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 2.0 + 1e-5


# --- square against gradient masking (the zoo's trained model) ----------------------------------


@pytest.mark.parametrize("mask", [Scaled, Rounded], ids=["logits-x1000", "rounded-input"])
@pytest.mark.slow
def test_square_sees_through_gradient_masking(mask: type, trained, digits_batch, one_thread) -> None:
    model = mask(trained.module).eval()
    x, y = digits_batch.images, digits_batch.labels
    labels = _labels(model, x, y)
    clean = (labels.predicted == y).float().mean().item()

    def top1(name: str, config) -> float:
        ((_, x_adv),) = REGISTRY[name].run(model, x, labels, [16.0], config, torch.Generator().manual_seed(0))
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).float().mean().item()

    assert top1("fgsm", FgsmConfig()) == clean and top1("pgd", PgdConfig()) == clean  # gradients see nothing
    assert top1("square", SquareConfig(queries=150)) < clean - 0.3  # measured 0.72 at 100, about 0.1 at 300 queries


# --- APGD and APGD-T (Croce & Hein 2020) --------------------------------------------------------

apgd_module = sys.modules["robench.attacks.apgd"]  # robench.attacks.apgd the name is the function


def test_apgd_checkpoints_are_the_papers() -> None:
    # p_0 = 0, p_1 = .22, then steps of max(previous step - .03, .06): .19, .16, .13, .10, .07, .06, .06
    # p = .22 .41 .57 .70 .80 .87 .93 .99 (the next, 1.05, is past the end); w_j = ceil(p_j * steps)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(200) == [44, 82, 114, 140, 160, 174, 186, 198]
    # 10 steps: 2.2 4.1 5.7 7.0 8.0 8.7 9.3 9.9 round up to 3 5 6 7 8 9 10 10; the two 10s count once
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1) == [1] and checkpoints(0) == []


def test_dlr_losses_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 2.0]])
    true = torch.tensor([0, 0])
    # right: -(3 - 2) / (3 - 1) = -0.5; wrong: -(0 - 5) / (5 - 1) = 1.25 (positive exactly when misclassified)
    torch.testing.assert_close(dlr_loss(logits, true), torch.tensor([-0.5, 1.25]))
    # DLR-T toward class 1: -(3 - 1) / (3 - (1 + 0) / 2) = -0.8; toward 3: -(0 - 2) / (5 - (1 + 0) / 2) = 4 / 9
    torch.testing.assert_close(dlr_targeted_loss(logits, true, torch.tensor([1, 3])), torch.tensor([-0.8, 4 / 9]))
    # both are unchanged by scaling and shifting the logits: what makes them work where CE saturates
    torch.testing.assert_close(dlr_loss(logits * 1000 - 7, true), torch.tensor([-0.5, 1.25]))
    with pytest.raises(RobenchError, match="at least 3 classes"):
        dlr_loss(logits[:, :2], true)
    with pytest.raises(RobenchError, match="at least 4 classes"):
        dlr_targeted_loss(logits[:, :3], true, torch.tensor([1, 1]))


def test_apgd_t_targets_are_the_top_non_true_classes_capped() -> None:
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.9, 0.2], [0.4, 0.0, 0.3, 0.2, 0.1]])
    true = torch.tensor([3, 0])
    assert base.ranked_targets(logits, true, 2).tolist() == [[1, 2], [2, 3]]
    assert base.ranked_targets(logits, true, 9).tolist() == [[1, 2, 4, 0], [2, 3, 4, 1]]  # at most classes - 1


class _Fixed(nn.Module):
    """The same logits whatever the input (no gradient reaches x): nothing is ever fooled."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(len(x))
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


def test_apgd_t_runs_each_target_once_and_apgd_counts_its_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _Fixed(torch.tensor([[0.1, 0.5, 0.3, 0.9, 0.2]]))
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = Labels.from_logits(model(x), torch.tensor([3, 3]))  # both right, and stay right
    seen, real = [], apgd_module._single_run

    def spy(model: nn.Module, x: torch.Tensor, start: torch.Tensor, goal, *rest):
        seen.append(None if goal.target is None else goal.target.tolist())
        return real(model, x, start, goal, *rest)

    monkeypatch.setattr(apgd_module, "_single_run", spy)
    model.rows.clear()
    _run("apgd_t", model, x, labels, [8.0], ApgdTConfig(targets=9, steps=10))
    assert seen == [[1, 1], [2, 2], [4, 4], [0, 0]]  # one run per rank (1 2 4 0 below class 3), capped at 4
    assert model.rows == [2] * 4 * 11  # a forward at the start and after each of the 10 steps
    model.rows.clear()
    _run("apgd", model, x, labels, [4.0, 8.0], ApgdConfig(steps=10, restarts=2))
    assert model.rows == [2] * 2 * 2 * 11  # every eps and restart on its own


def test_apgd_t_needs_four_classes(small_cnn: nn.Module) -> None:
    model = _Fixed(torch.tensor([[0.1, 0.5, 0.3]]))
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for logits in (None, model(x)):  # ranked from labels.logits, else from one forward
        labels = Labels(torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([0, 0]), logits)
        with pytest.raises(RobenchError, match="apgd_t .* at least 4 classes; the model gives 3"):
            _run("apgd_t", model, x, labels, [8.0])
    two = _Fixed(torch.tensor([[0.1, 0.5]]))
    labels = Labels.from_logits(two(x), torch.tensor([0, 1]))
    with pytest.raises(RobenchError, match="DLR loss needs at least 3 classes"):
        _run("apgd", two, x, labels, [8.0], ApgdConfig(loss="dlr"))
    _run("apgd", two, x, labels, [8.0], ApgdConfig(steps=2))  # cross-entropy works on two classes


def test_apgd_one_step_from_x_is_fgsm(linear_model) -> None:
    # the first step is 2 eps along the gradient sign, projected back onto the eps-ball: FGSM's point.
    # CE is convex along that line, so the step raises the loss and the attack keeps that point.
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    labels = _labels(linear_model, x, torch.tensor([0, 1, 0, 1, 0, 1]))
    labels = _labels(linear_model, x, labels.predicted)  # right at x: a wrong x^(0) would be kept as it is
    one = _run("apgd", linear_model, x, labels, [4.0, 16.0], ApgdConfig(steps=1, random_start=False))
    fgsm = _run("fgsm", linear_model, x, labels, [4.0, 16.0])
    assert torch.equal(one[4.0], fgsm[4.0]) and torch.equal(one[16.0], fgsm[16.0])


def test_rise_ignores_float_noise() -> None:
    old = torch.tensor([1.0, 1.0, 0.0, -20.0, 20.0])
    new = torch.tensor([1.0 + 1e-6, 1.01, 1e-3, -19.99, 20.0001])
    assert rose(new, old).tolist() == [False, True, True, True, False]


# --- the L2 threat model: FGM, BIM and PGD L2, APGD L2 -------------------------------------------


@pytest.mark.parametrize("config", [StepLLConfig, IterLLConfig])
def test_least_likely_attacks_refuse_l2_naming_the_field(config) -> None:
    assert config().norm == config(norm="linf").norm == "linf"
    with pytest.raises(FieldError, match="norm must be linf: this attack has no L2 version, got 'l2'") as e:
        config(norm="l2")
    assert e.value.field == "norm"


def test_a_suite_entry_with_l2_on_iter_ll_names_the_key() -> None:
    from robench.attacks.suite import build_config

    assert build_config("bim", {"norm": "l2"}).norm == "l2"
    with pytest.raises(RobenchError, match="'norm' must be linf.* for attack 'iter_ll'"):
        build_config("iter_ll", {"norm": "l2"})
    with pytest.raises(RobenchError, match="'norm' of attack 'pgd' must be linf | l2"):
        build_config("pgd", {"norm": "l1"})


def test_l2_projection_and_steepest_by_hand() -> None:
    # delta (0.3, 0.4) has L2 norm 0.5: at eps 0.25 it halves, at eps 1 it stays; [0, 1] clips afterwards
    x = torch.tensor([[[[0.5, 0.5]]], [[[0.9, 0.1]]]])
    moved = x + torch.tensor([[[[0.3, 0.4]]], [[[0.3, -0.4]]]])
    torch.testing.assert_close(base.project(moved, x, 0.25, "l2"), torch.tensor([[[[0.65, 0.7]]], [[[1.0, 0.0]]]]))
    torch.testing.assert_close(base.project(moved, x, 1.0, "l2"), torch.tensor([[[[0.8, 0.9]]], [[[1.0, 0.0]]]]))
    g = torch.tensor([[[[3.0, -4.0]]], [[[0.0, 0.0]]]])
    assert torch.equal(base.steepest(g, "linf"), g.sign())
    torch.testing.assert_close(base.steepest(g, "l2"), torch.tensor([[[[0.6, -0.8]]], [[[0.0, 0.0]]]]))
    assert base.in_pixels(8.0, "linf") == 8 / 255 and base.in_pixels(0.5, "l2") == 0.5  # no /255 for l2


def test_l2_ball_noise_is_in_the_unit_ball_and_per_sample() -> None:
    from robench.attacks.base import SampleNoise, l2_ball_noise

    x = torch.zeros(64, 3, 2, 2)
    noise = SampleNoise(tuple(range(64)))
    z = l2_ball_noise(x, noise)
    radius = z.flatten(1).norm(dim=1)
    assert radius.max() <= 1 + 1e-6 and radius.min() > 0
    # uniform by volume in 12 dimensions: P(radius < r) = r^12, so the median radius is 0.5^(1/12) = 0.944
    assert 0.9 < radius.median() < 0.98
    assert torch.equal(l2_ball_noise(x[:1], SampleNoise(noise.seeds[5:6]))[0], z[5])
    g = torch.Generator().manual_seed(0)
    assert l2_ball_noise(x, g).flatten(1).norm(dim=1).max() <= 1 + 1e-6


def _hand_gradient(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d CE / dx for logits = W x + b: W^T (softmax - onehot), no autograd."""
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    p = torch.softmax(x.flatten(1) @ w.T + b, dim=1)
    return ((p - F.one_hot(target, w.shape[0]).to(p.dtype)) @ w).view_as(x)


@pytest.mark.parametrize("eps", [0.05, 0.3, 2.0])
def test_fgm_is_the_normalised_gradient_step_by_hand(eps: float, linear_model) -> None:
    # two classes: the gradient is p_other * (w_other - w_label), direction +-[-2, 3, -1, 3] / sqrt(23)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 2, 2, generator=g)
    x[:4, 0, 0, 0], x[4:, 0, 1, 1] = 0.002, 0.998
    labels = _labels(linear_model, x, torch.randint(0, 2, (8,), generator=g))
    grad = _hand_gradient(linear_model, x, labels.true)
    unit = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(unit.abs(), _pixels(*[[2, 3, 1, 3]] * 8) / math.sqrt(23))
    out = _run("fgsm", linear_model, x, labels, [0.0, eps], FgsmConfig(norm="l2"))
    assert torch.equal(out[0.0], x)
    torch.testing.assert_close(out[eps], (x + eps * unit).clamp(0, 1), rtol=0, atol=1e-6)
    assert (out[eps] - x).flatten(1).norm(dim=1).max() <= eps + 1e-6


def test_pgd_l2_one_full_step_without_start_is_fgm(small_cnn: nn.Module) -> None:
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    fgm = _run("fgsm", small_cnn, x, labels, [0.5], FgsmConfig(norm="l2"))[0.5]
    one = _run("pgd", small_cnn, x, labels, [0.5], PgdConfig(norm="l2", steps=1, step_size=0.5, random_start=False))
    torch.testing.assert_close(one[0.5], fgm, rtol=0, atol=1e-6)  # the projection only rescales by ~1
    a, b = (_run("pgd", small_cnn, x, labels, [0.5], L2["pgd"], seed=s)[0.5] for s in (1, 2))
    assert not torch.equal(a, b), "the L2 random start comes from rng"


@pytest.mark.parametrize("config", [BimConfig(norm="l2", step_size=0.1), BimConfig(norm="l2", step_size=0.037),
                                    BimConfig(norm="l2", step_size=0.1, steps=7)], ids=["0.1", "0.037", "7-steps"])
def test_bim_l2_shared_sweep_equals_per_eps_calls_and_fits_its_budget(config, gradient_calls,
                                                                      small_cnn: nn.Module) -> None:
    x, y = _inputs(3)
    labels = _labels(small_cnn, x, y)
    sweep_eps = [0.0, 0.1, 0.25, 0.5, 1.0]
    sweep = _run("bim", small_cnn, x, labels, sweep_eps, config)
    assert len(gradient_calls) <= REGISTRY["bim"].budget(config, sweep_eps, 5) // 2
    for eps in sweep_eps:
        assert torch.equal(sweep[eps], _run("bim", small_cnn, x, labels, [eps], config)[eps]), eps
    assert not torch.equal(sweep[0.1], sweep[1.0])


def test_bim_l2_schedule_counts_eps_in_steps() -> None:
    from robench.attacks.iterative import schedule_steps

    # eps 0.5 at step 0.1 is 5 steps' worth: floor(min(5 + 4, 6.25)) = 6, as linf eps 5 at step 1/255
    assert schedule_steps(0.5, 0.1, None, "l2") == 6 == paper_steps(5.0)
    assert schedule_steps(0.5, 0.1, 3, "l2") == 3 and schedule_steps(8.0, 0.37, None, "linf") == paper_steps(8.0)


def test_apgd_l2_start_is_on_the_sphere() -> None:
    from robench.attacks.apgd import start_point
    from robench.attacks.base import SampleNoise

    x = torch.full((5, 3, 4, 4), 0.5)
    start = start_point(x, 0.3, SampleNoise(tuple(range(5))), "l2")
    torch.testing.assert_close((start - x).flatten(1).norm(dim=1), torch.full((5,), 0.3))  # no pixel clips at 0.5
    assert torch.equal(start_point(x, 0.3, None, "l2"), x)


# --- the transfer family: one loop (momentum.py), DI and TI (transforms.py) ---------------------------


@pytest.mark.parametrize("name", ["mi_fgsm", "ni_fgsm"])
def test_momentum_on_linear_model_ends_at_fgsm(name: str, linear_model) -> None:
    # two classes: every gradient is a positive multiple of w_other - w_label, so momentum, its mean-|g|
    # normalisation and NI's look-ahead keep one sign; 10 steps of 4/255 reach each eps-ball edge (or [0, 1])
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    x[0, 0, 0, 0], x[1, 0, 1, 1] = 0.01, 0.99
    labels = _labels(linear_model, x, torch.tensor([0, 1, 0, 1, 0, 1]))
    eps = [4.0, 8.0, 16.0]
    many = _run(name, linear_model, x, labels, eps, REGISTRY[name].config(step_size=4.0))
    one = _run("fgsm", linear_model, x, labels, eps)
    for e in eps:
        assert torch.equal(many[e], one[e]), e


def test_mi_without_momentum_is_bim(small_cnn: nn.Module) -> None:
    # decay 0: sign(g / mean|g|) = sign(g), so each step is BIM's; with momentum the path differs
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    bim = _run("bim", small_cnn, x, labels, [8.0], BimConfig(steps=10, step_size=0.8))[8.0]
    assert torch.equal(_run("mi_fgsm", small_cnn, x, labels, [8.0], MiFgsmConfig(decay=0.0))[8.0], bim)
    assert not torch.equal(_run("mi_fgsm", small_cnn, x, labels, [8.0])[8.0], bim)


def test_each_switch_changes_the_path_and_the_combination_runs(small_cnn: nn.Module) -> None:
    x, y = _inputs()
    labels = _labels(small_cnn, x, y)
    mi = _run("mi_fgsm", small_cnn, x, labels, [8.0])[8.0]
    for config in (NiFgsmConfig(), MiFgsmConfig(diversity=0.5), MiFgsmConfig(kernel=3), VmiFgsmConfig(samples=2)):
        assert not torch.equal(_run("mi_fgsm", small_cnn, x, labels, [8.0], config)[8.0], mi), config
    combo = _run("mi_fgsm", small_cnn, x, labels, [8.0], MiFgsmConfig(diversity=0.5, kernel="auto", samples=2))[8.0]
    assert (combo - x).abs().max().item() <= 8 / 255 + 1e-7


def test_family_defaults_are_the_papers() -> None:
    assert (MiFgsmConfig().decay, MiFgsmConfig().steps, MiFgsmConfig().step_size) == (1.0, 10, None)
    assert NiFgsmConfig().nesterov and NiFgsmConfig().decay == 1.0
    assert (DiFgsmConfig().diversity, DiFgsmConfig().decay, DiFgsmConfig().resize) == (0.5, 0.0, 330 / 299)
    assert (TiFgsmConfig().kernel, TiFgsmConfig().decay) == ("auto", 0.0)
    assert (VmiFgsmConfig().samples, VmiFgsmConfig().beta, VmiFgsmConfig().decay) == (20, 1.5, 1.0)
    vmi = REGISTRY["vmi_fgsm"]
    assert vmi.budget(vmi.config(), [0.0, 4.0, 16.0], 10) == 2 * 10 * 2 * 21  # N + 1 gradients a step
    assert REGISTRY["di_fgsm"].budget(DiFgsmConfig(steps=3), [16.0], 10) == 6


@pytest.mark.parametrize(("field", "value", "says"), [
    ("kernel", 4, "kernel must be an odd number of pixels in [1, 1001], or auto, got 4"),
    ("kernel", "big", "kernel must be int or auto, got 'big'"),
    ("diversity", 1.5, "diversity must be at most 1, got 1.5"),
    ("resize", 0.9, "resize must be at least 1, got 0.9"),
    ("samples", -1, "samples must be at least 0, got -1"),
    ("decay", float("nan"), "decay must be a finite number, got nan"),
    ("norm", "l2", "norm must be linf: this attack has no L2 version, got 'l2'"),
])
def test_family_config_checks_its_fields(field: str, value, says: str) -> None:
    with pytest.raises(FieldError) as e:
        MiFgsmConfig(**{field: value})
    assert str(e.value) == says


def test_ti_kernel_is_the_authors_gaussian_scaled_to_the_image() -> None:
    k3 = transforms.gaussian_kernel(3)  # density at -3, 0, 3: [e^-4.5, 1, e^-4.5], outer product, normalised
    line = torch.tensor([math.exp(-4.5), 1.0, math.exp(-4.5)], dtype=torch.float64)
    torch.testing.assert_close(k3, torch.outer(line, line) / line.sum() ** 2, rtol=0, atol=1e-15)
    k15 = transforms.gaussian_kernel(15)
    assert k15.shape == (15, 15) and abs(k15.sum().item() - 1) < 1e-12 and torch.equal(k15, k15.T)
    assert k15[7, 7] == k15.max() and torch.equal(transforms.gaussian_kernel(1), torch.ones(1, 1, dtype=torch.float64))
    sides = {s: transforms.kernel_side("auto", s, s) for s in (299, 224, 128, 64, 32, 6)}
    assert sides == {299: 15, 224: 11, 128: 7, 64: 5, 32: 5, 6: 5}
    assert transforms.kernel_side("auto", 224, 500) == 11 and transforms.kernel_side(9, 32, 32) == 9


def test_ti_smoothing_spreads_a_point_into_the_kernel_and_keeps_shape() -> None:
    grad = torch.zeros(2, 3, 9, 9)
    grad[0, 1, 4, 4] = 2.0
    out = transforms.smooth(grad, transforms.gaussian_kernel(5))
    assert out.shape == grad.shape and torch.equal(out[1], grad[1]) and torch.equal(out[0, 0], grad[0, 0])
    torch.testing.assert_close(out[0, 1, 2:7, 2:7], 2 * transforms.gaussian_kernel(5).float())
    assert out[0, 1].sum().item() == pytest.approx(2.0) and torch.equal(transforms.smooth(grad, torch.ones(1, 1)), grad)


def test_di_by_hand_canvas_twice_the_image() -> None:
    # resize 2: an 8 px image on a 16 px canvas, read back at 8 px, is a 2 x 2 average where the image lies and
    # 0 on the padding: rnd = 8 + floor(u1 * 8), top = floor(u2 * (16 - rnd)), left = floor(u3 * (16 - rnd))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pooled = F.avg_pool2d(x, 2)
    draws = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, 0.0, 0.5, 0.99]])  # the second: top 4, left 7
    out = transforms.diverse(x, draws, prob=1.0, resize=2.0)
    torch.testing.assert_close(out[0, :, :4, :4], pooled[0])
    assert out[0, :, 4:].abs().max() == 0 and out[0, :, :, 4:].abs().max() == 0
    # top 4: output rows 2-5 average image rows (0, 1) ... (6, 7); left 7 (odd): output columns 3-7 average
    # image columns (-1, 0), (1, 2) ... (7, 8), the outside ones 0
    torch.testing.assert_close(out[1, :, 2:6, 3:], F.avg_pool2d(F.pad(x[1], (1, 1)), 2))
    assert out[1, :, [0, 1, 6, 7]].abs().max() == 0 and out[1, :, :, :3].abs().max() == 0
    skipped = transforms.diverse(x, draws, prob=0.25, resize=2.0)  # the coin: 0.0 < 0.25 moves, 0.3 does not
    assert torch.equal(skipped[1], x[1]) and torch.equal(skipped[0], out[0])
    assert torch.equal(transforms.diverse(x[:, :, :2, :2], draws, prob=1.0, resize=1.1), x[:, :, :2, :2])


def test_di_gradient_flows_through_the_transform() -> None:
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    transforms.diverse(x, torch.zeros(1, 4), prob=1.0, resize=2.0).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, torch.full_like(x, 0.25))  # each pixel counts 1/4 once
