"""Counting a model's forward and backward passes, per sample: the cost measure of an attack.

Wall time depends on the machine and on who else shares it; passes do not. A pass over a
batch of B samples counts B, so runs on different batch sizes compare.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

from robench.models.ensemble import Ensemble


@dataclass
class Passes:
    """Per-sample forward and backward passes through one model."""

    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        """Forward and backward passes together."""
        return self.forward + self.backward

    def add(self, other: Passes) -> None:
        """Add another count to this one."""
        self.forward += other.forward
        self.backward += other.backward


def _units(model: nn.Module) -> list[nn.Module]:
    """The modules whose passes count: an ensemble's members, else the model itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def pass_units(model: nn.Module) -> int:
    """How many passes one step on ``model`` counts: K for an ensemble of K members (plans scale by it), else 1."""
    return len(_units(model))


@contextmanager
def count_passes(model: nn.Module) -> Iterator[Passes]:
    """Count ``model``'s passes while the block runs; the hook is removed afterwards.

    A forward counts its batch; a backward counts when a gradient flows back into the
    model's output, which is where every input-gradient attack pays for its backward. An
    ``Ensemble`` counts each member's passes: a step on K members costs K of each.
    """
    passes = Passes()

    def backward_hook(grad: Tensor) -> None:
        passes.backward += grad.shape[0]

    def forward_hook(_: nn.Module, __: object, out: object) -> None:
        if isinstance(out, Tensor):
            passes.forward += out.shape[0] if out.dim() else 1
            if out.requires_grad:
                out.register_hook(backward_hook)

    units = _units(model)
    handles = [unit.register_forward_hook(forward_hook) for unit in units]
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()
