"""Health probes: each fires on a broken toy model, a sound one passes them all, and probing leaves the
model (mode, flags, weights) and the RNG as they were.

Probes use a nearest-mean classifier of the digits (weights are the class means, no randomness)
on 40 test images; the broken variants differ from it in one step of their forward pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.analysis import health, probes
from robench.data import InputConfig, open_source
from robench.models import Normalized

pytestmark = pytest.mark.usefixtures("one_thread")


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
    return {f.check: f for f in probes.probe(toy(kind), *batch, kind)}


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
        assert f.model == kind and f.docs == f"docs/health.md#{f.check}"
        assert f.line().startswith(f"{f.check} ({kind}") and f.line().endswith(f"(see docs/health.md#{f.check})")


def test_unbounded_flag_names_pgd_at_255(batch) -> None:
    f = probed("reversed", batch)["unbounded_attack_fails"]
    assert (f.attack, f.eps) == ("pgd", 255.0)
    assert f.record() == {"check": "unbounded_attack_fails", "model": "reversed", "attack": "pgd", "eps": 255.0,
                          "message": f.message, "docs": "docs/health.md#unbounded_attack_fails"}
    assert f.line().startswith("unbounded_attack_fails (reversed, pgd eps 255): ")


def test_probe_leaves_mode_flags_weights_and_rng_alone(batch) -> None:
    model = toy("dropout")  # dropout draws from the global RNG on every forward pass
    model.train()
    model.model.fc.bias.requires_grad_(False)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    rng = torch.get_rng_state()
    flags = probes.probe(model, *batch, "m")
    assert [f.check for f in flags] == ["randomized_outputs"]  # the probes ran, and drew random numbers
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    assert model.model.fc.weight.requires_grad and not model.model.fc.bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_probe_uses_eval_mode(batch) -> None:
    model = Normalized(nn.Sequential(Centroids(), nn.Dropout(0.5)), (0.5,), (0.5,)).train()
    assert probes.probe(model, *batch, "m") == []  # nn.Dropout is off in eval mode, as the engine runs it
    assert model.training


def test_nan_logits_are_never_correct_in_the_unbounded_probe(batch) -> None:
    """argmax of a NaN row is class 0: an all-NaN model had 'pgd leaves 10% correct' (the zeros) as a finding."""

    class AllNan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: Tensor) -> Tensor:
            return x.flatten(1)[:, :10] * self.w * float("nan")

    x, _ = batch
    y = torch.zeros(len(x), dtype=torch.long)  # every label is what argmax of a NaN row says
    assert probes.unbounded_attack_fails(AllNan(), x, y, AllNan()(x)) is None  # was: "leaves 100% ... correct"


# --- the probes' sample count: a fixed cost, the run's first samples --------------------------------

DIGITS = InputConfig(channels=1, size=(8, 8))


class Counted(nn.Module):
    """A model that records the rows of every forward pass, and of every backward pass through its output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.forward_rows, self.backward_rows = model, [], []

    def forward(self, x: Tensor) -> Tensor:
        self.forward_rows.append(len(x))
        out = self.model(x)
        if out.requires_grad:
            out.register_hook(lambda g: self.backward_rows.append(len(g)))
        return out


def counted_probe(samples: int) -> tuple[Counted, int]:
    model = Counted(toy())
    _, n = probes.probe_first(model, open_source("digits", limit=40), DIGITS, samples, "m")
    return model, n


def test_probes_see_at_most_the_set_number_of_samples() -> None:
    """Every forward and backward pass of the probes sees the first 8 samples, not the 40 of the data."""
    model, n = counted_probe(8)
    assert n == 8
    assert set(model.forward_rows) == {8} and set(model.backward_rows) == {8}
    whole, n_whole = counted_probe(40)
    assert n_whole == 40 and set(whole.forward_rows) == {40}
    assert len(model.forward_rows) == len(whole.forward_rows) == 9  # the same passes: the cost scales with the count
    assert len(model.backward_rows) == len(whole.backward_rows) == 6  # an input gradient, 5 pgd steps (docs/health.md)


@pytest.mark.parametrize("samples", [1, 7, 32])
def test_probes_take_the_first_samples_in_id_order(samples: int) -> None:
    src = open_source("digits", limit=40)
    x, y = probes.first_samples(src, DIGITS, samples)
    everything = next(src.batches(DIGITS, 40))
    assert torch.equal(x, everything.images[:samples]) and torch.equal(y, everything.labels[:samples])
    x, y = probes.first_samples(src, DIGITS, 1000)  # more than the data: all of it
    assert torch.equal(x, everything.images) and len(y) == 40


@pytest.mark.parametrize("kind", ["logits", "softmax", "log_softmax", "round", "dropout", "reversed"])
def test_verdicts_are_the_whole_batchs_when_the_count_covers_the_data(kind: str, batch) -> None:
    """With at least as many probe samples as data, the probes say what they said on the whole first batch."""
    before = probed(kind, batch)  # the probes as they ran before the count: on the run's batch of all 40
    src = open_source("digits", limit=40)
    for samples in (40, 41, 2**20):
        torch.manual_seed(0)
        flags, n = probes.probe_first(toy(kind), src, DIGITS, samples, kind)
        assert n == 40 and {f.check: f for f in flags} == before
