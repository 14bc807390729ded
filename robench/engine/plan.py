"""The plan of a run: who crafts, who scores, and where examples may already be kept."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn

from robench.attacks.base import TargetClass
from robench.attacks.suite import AttackSpec
from robench.data import InputConfig
from robench.engine.outcomes import Pair

Deliver = Callable[[Tensor, Tensor, float], Tensor]  # (target's clean x, source's x_adv - x, eps) -> target's input
Examples = list[tuple[float, Tensor]]  # (eps, x_adv) for every eps of an attack


@dataclass(frozen=True)
class Participant:
    """A model as the engine sees it: its label, a module taking [0, 1] pixels, and its input config."""

    label: str
    module: nn.Module
    input: InputConfig


def sample_key(sample_id: str, content: str) -> str:
    """What an example store keys a sample on: its id and its content hash (an altered image under one name is
    another sample)."""
    return f"{sample_id}#{content}" if content else sample_id


class ExampleStore(Protocol):
    """Where a source's examples may already be kept (transfer's cache), per sample.

    ``ids`` are the samples' keys (id and content hash: the same name with other pixels is
    another sample). ``x`` is the source's clean input of those samples ([N, C, H, W], rows as ``ids``): a store
    may keep the perturbation rather than the example. ``rows`` are the samples' positions in the run (a store may
    group samples by them; it must still find a sample by its key alone). ``save`` returns the examples exactly as
    a later ``load`` gives them back, and the engine scores those, so a run's numbers do not
    depend on whether the store already had them (a lossy store included).
    """

    def load(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor,
             rows: Sequence[int]) -> list[Examples | None]: ...

    def save(self, source: str, spec: AttackSpec, ids: list[str], x: Tensor, examples: Examples,
             rows: Sequence[int]) -> Examples: ...


@dataclass(frozen=True)
class Plan:
    """The models of a run and, for each source, the labels that score its examples (itself first)."""

    models: tuple[Participant, ...]
    targets: Mapping[str, tuple[str, ...]]
    deliver: Deliver | None = None  # how an example reaches a target of another input config
    aim: TargetClass | None = None  # a targeted run's choice of each sample's class (goal_classes); None: untargeted

    def __post_init__(self) -> None:
        crosses = any(self.model(s).input != self.model(t).input for s, t in self.pairs())
        if crosses and self.deliver is None:
            raise ValueError("a source's examples reach a target of another input config; give the plan a deliver")

    @classmethod
    def white_box(cls, models: Iterable[Participant], aim: TargetClass | None = None) -> Plan:
        """Every model attacked with its own gradients and scored by itself alone."""
        models = tuple(models)
        return cls(models, {m.label: (m.label,) for m in models}, aim=aim)

    def cross(self, target_x: Tensor, delta: Tensor, eps: float) -> Tensor:
        """A source's example (``delta`` from its clean x) as a target of another input config takes it."""
        assert self.deliver is not None, "__post_init__ refuses a plan that crosses input configs without deliver"
        return self.deliver(target_x, delta, eps)

    def pairs(self) -> list[Pair]:
        """Every (source, target) pair, sources in model order."""
        return [(s, t) for s in self.targets for t in self.targets[s]]

    def model(self, label: str) -> Participant:
        """The participant labelled ``label``."""
        return next(m for m in self.models if m.label == label)

    def configs(self) -> list[InputConfig]:
        """The distinct input configs, each read once per batch."""
        return list(dict.fromkeys(m.input for m in self.models))
