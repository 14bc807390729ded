"""Progress inside an attack: budgets in passes, the per-iteration report, the bar and the log's heartbeat."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from robench import engine
from robench.attacks import REGISTRY, Attack, Labels
from robench.attacks.base import gradient_sign
from robench.attacks.suite import AttackSpec, Suite
from robench.core.progress import iterations_to
from robench.core.stop import check_stop
from robench.data import InputConfig, TensorSource
from robench.engine.passes import count_passes
from robench.render.console import progress_bar

# --- budgets ---------------------------------------------------------------------------------------


class Unfooled(nn.Module):
    """Logits fixed at class 0 whatever the input, with a (zero) gradient: no attack ever fools it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :1] * 0 + torch.tensor([5.0, 1.0, 0.5, 0.2, 0.1])


CHEAP = {"apgd": {"steps": 5}, "apgd_t": {"steps": 4, "targets": 9}, "fab_t": {"steps": 3, "targets": 9},
         "square": {"queries": 7}, "pgd": {"steps": 3}}


def _spent(name: str, model: nn.Module, x: Tensor, labels: Labels, eps: list[float]) -> tuple[float, int]:
    """(measured passes per sample, budget per sample) of one attack call at a cheap config."""
    attack = REGISTRY[name]
    config = attack.config(**CHEAP.get(name, {}))
    with count_passes(model) as passes:
        list(attack.run(model, x, labels, eps, config, torch.Generator().manual_seed(0)))
    return passes.total / len(x), attack.budget(config, eps, 5)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_an_attack_spends_its_budget_on_samples_it_never_fools(name: str) -> None:
    """The budget is the worst case, met exactly: every eps, target (at most classes - 1) and restart runs through."""
    model, x = Unfooled(), torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    labels = Labels.from_logits(model(x).detach(), torch.zeros(3, dtype=torch.long))
    spent, budget = _spent(name, model, x, labels, [4.0])
    assert spent == budget > 0
    spent_eps0, budget_eps0 = _spent(name, model, x, labels, [0.0, 4.0])  # eps 0 costs nothing
    assert (spent_eps0, budget_eps0) == (spent, budget)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_an_attack_spends_at_most_its_budget(name: str, small_cnn: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, 6, 6, generator=g), torch.randint(0, 5, (6,), generator=g)
    small_cnn.eval()
    with torch.no_grad():
        labels = Labels.from_logits(small_cnn(x), y)
    spent, budget = _spent(name, small_cnn, x, labels, [2.0, 16.0])
    assert 0 < spent <= budget


def test_the_paper_schedules_budget_is_its_trunk_and_what_may_leave_it() -> None:
    """bim at eps 4 and 16: floor(min(eps + 4, 1.25 eps)) = 5 and 20 steps; eps 4 rides the trunk for at least
    3 steps (a fourth could reach its ball), so at most 5 - 4 = 1 of its own: 21 gradients, 2 passes each."""
    bim = REGISTRY["bim"]
    assert bim.budget(bim.config(), [4.0, 16.0], 10) == 2 * (20 + 1)
    assert bim.budget(bim.config(), [2.0, 4.0, 8.0, 16.0], 10) == 2 * (20 + 0 + 1 + 2)
    assert bim.budget(bim.config(steps=3), [2.0, 16.0], 10) == 2 * (3 + 1)  # eps 2 leaves after 1 step
    assert bim.budget(bim.config(), [0.0, 16.0], 10) == bim.budget(bim.config(), [16.0], 10) == 2 * 20


# --- the per-iteration report ----------------------------------------------------------------------


def test_each_stop_check_tells_the_innermost_sink_while_it_is_set() -> None:
    outer: list[int] = []
    inner: list[int] = []
    check_stop()  # no sink: nothing to tell
    with iterations_to(lambda: outer.append(1)):
        check_stop()
        with iterations_to(lambda: inner.append(1)):
            check_stop()
            check_stop()
        check_stop()
    check_stop()
    assert (len(outer), len(inner)) == (2, 2)


# --- a slow attack inside one stage ----------------------------------------------------------------


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class SlowConfig:
    steps: int = 4


def _slow_attack(clock: Clock, seconds: float) -> Attack:
    """An attack of ``steps`` gradients per eps, each taking ``seconds`` on ``clock`` (as pgd: a known name)."""

    def slow(model: nn.Module, x: Tensor, labels: Labels, eps: Sequence[float], config: SlowConfig,
             rng: object = None, early_stop: bool = False) -> Iterator[tuple[float, Tensor]]:
        for e in eps:
            for _ in range(config.steps):
                check_stop()
                gradient_sign(model, x, labels.true)
                clock.now += seconds
            yield e, x.clone()

    return Attack("pgd", slow, SlowConfig, False, budget=lambda config, eps, classes: 2 * config.steps * len(eps))


def _run_slow(monkeypatch: pytest.MonkeyPatch, small_cnn: nn.Module, clock: Clock, seconds: float, steps: int,
              terminal: bool) -> str:
    """One batch of 8 images under the slow attack alone, reported to a progress bar on a string; its text."""
    monkeypatch.setitem(REGISTRY, "pgd", _slow_attack(clock, seconds))
    suite = Suite((AttackSpec("slow", "pgd", (8.0,), SlowConfig(steps)),))
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)
    src = TensorSource("random", images, labels, [f"r:{i}" for i in range(8)], 5, scale=1.0)
    cfg = InputConfig(size=(8, 8))
    plan = engine.Plan.white_box([engine.Participant("m", small_cnn, cfg)])
    out = engine.Matrix.empty(src.ids, engine.settings_of(suite), plan.pairs())
    stream = io.StringIO()
    with progress_bar(stream=stream, terminal=terminal, clock=clock) as reporter:
        hooks = engine.Hooks(progress=reporter.progress, status=reporter.status, what="eval")
        engine.run_batches(plan, ({cfg: b} for b in src.batches(cfg, 8)), suite, out, 0, hooks)
    return stream.getvalue()


def test_the_bar_moves_inside_one_stage_with_an_eta_from_passes(monkeypatch: pytest.MonkeyPatch,
                                                                small_cnn: nn.Module) -> None:
    """4 steps of 10 s on one batch of 8: after step k, 2k of 8 images and 40 - 10k s left, the true time left.

    Per sample the plan is 8 passes (4 gradients); k steps spent 2k of them, a quarter each.
    """
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", _run_slow(monkeypatch, small_cnn, Clock(), 10.0, 4, terminal=True))
    drawn = {(int(m[1]), m[2]) for m in re.finditer(r"(\d)/8 +[\d.]+ images/s +eta (\d:\d\d:\d\d)", text)}
    assert {(2, "0:00:30"), (4, "0:00:20"), (6, "0:00:10")} <= drawn  # before the batch ended
    assert (8, "0:00:00") in drawn
    assert "slow on m: 16/64 passes" in text and "slow on m: 48/64 passes" in text


def test_the_log_has_a_heartbeat_inside_one_stage(monkeypatch: pytest.MonkeyPatch, small_cnn: nn.Module) -> None:
    """6 steps of 20 s, no terminal: a line every 30 s at most, with the stage, images and passes done.

    Step k (k = 0..5) starts at 20k s having spent 2k of the 12 planned passes per sample: 8k/6 images.
    Lines are due at 40 s and 80 s (30 s after the last), then the end at 120 s.
    """
    text = _run_slow(monkeypatch, small_cnn, Clock(), 20.0, 6, terminal=False)
    lines = text.splitlines()
    assert lines[0] == "eval: slow on m"
    assert lines[1] == ("eval: 2/8 images, 0.1 images/s, eta 0:01:20, elapsed 40 s, "
                        "now slow on m: 32/96 passes")
    assert lines[2] == ("eval: 5/8 images, 0.1 images/s, eta 0:00:40, elapsed 80 s, "
                        "now slow on m: 64/96 passes")
    assert lines[3].startswith("eval: 8/8 images, 0.1 images/s, eta 0:00:00, elapsed 120 s")
    assert len(lines) == 4
