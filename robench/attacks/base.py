"""What every attack shares: target labels, the model-state guard, input gradient and its sign, projection.

All attacks work on [0, 1] pixels. Under L-infinity (``norm: linf``, every attack's default) eps is in
1/255 units, as in the paper; under L2 (``norm: l2``) eps is the L2 norm of the whole perturbation in
[0, 1] pixels, taken as given (no /255), the unit RobustBench reports (0.5 on CIFAR-10).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.core.fields import Rule
from robench.errors import RobenchError

LabelKind = Literal["true", "predicted"]
# what an attack that can aim takes as ``label``: away from the true or predicted class, or toward the goal
AimKind = Literal["true", "predicted", "target"]
TargetClass = Literal["random", "least_likely"]  # how a targeted run picks each sample's goal (``goal_classes``)
TARGET_CLASSES: tuple[TargetClass, ...] = ("random", "least_likely")
Norm = Literal["linf", "l2"]  # the threat model: the ball an attack keeps its perturbation in
Eps = TypeVar("Eps", float, Tensor)  # one eps, or a tensor of them (one per example, as training draws them)


@dataclass(frozen=True)
class Labels:
    """Per-sample classes an attack may use, all taken from one clean forward pass."""

    true: Tensor  # [N] int64
    predicted: Tensor  # [N]
    least_likely: Tensor  # [N]
    logits: Tensor | None = None  # [N, classes] the clean logits, for attacks that rank classes (apgd_t, fab_t)
    goal: Tensor | None = None  # [N] the class a targeted run aims each sample at (goal_classes); None: untargeted

    @classmethod
    def from_logits(cls, logits: Tensor, true: Tensor, goal: Tensor | None = None) -> Labels:
        """Prediction and least-likely class of clean logits (argmin, as in the paper); ``goal`` as given."""
        return cls(true=true, predicted=logits.argmax(1), least_likely=logits.argmin(1), logits=logits, goal=goal)

    def rows(self, index: Tensor) -> Labels:
        """These samples' labels (index: [K] positions)."""
        return Labels(self.true[index], self.predicted[index], self.least_likely[index],
                      None if self.logits is None else self.logits[index],
                      None if self.goal is None else self.goal[index])

    def pick(self, kind: LabelKind) -> Tensor:
        """The labels an untargeted attack pushes away from."""
        return self.true if kind == "true" else self.predicted


def aim(labels: Labels, kind: AimKind) -> tuple[Tensor, float]:
    """The classes an attack takes its loss on ([N]) and the sign of its steps: +1 up that loss, -1 down it.

    ``target`` descends the loss of each sample's goal (``Labels.goal``), as step l.l. and iter l.l.
    descend the least-likely class's (Kurakin et al. 2017, eq. 2); ``true`` and ``predicted`` ascend
    the loss of that class. Raises RobenchError for ``target`` when the labels carry no goal.
    """
    if kind != "target":
        return labels.pick(kind), 1.0
    if labels.goal is None:
        raise RobenchError("label 'target' needs each sample's target class: run with target_class "
                           f"({' or '.join(TARGET_CLASSES)}), or give Labels a goal")
    return labels.goal, -1.0


def goal_classes(mode: TargetClass, logits: Tensor, true: Tensor, noise: SampleNoise) -> Tensor:
    """[N] each sample's target class under a targeted run (logits: [N, classes] the source's clean ones).

    ``least_likely``: the argmin of the logits over all classes, the paper's y_LL (Kurakin et al.
    2017, eq. 2), which can be the true class (torchattacks' least-likely mode leaves the true class
    out). ``random``: uniform among the classes other than the true one, from the sample's own stream
    (``noise``, one seed per sample), so it does not depend on the batch, its order or the source.
    """
    if mode == "least_likely":
        return logits.argmin(1)
    classes = logits.shape[1]
    u = noise.uniform(0, 1)[:, 0].to(true.device)
    offset = (u * (classes - 1)).long().clamp(max=classes - 2)  # 0 .. classes - 2, each equally likely
    return (true + 1 + offset) % classes


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration; both restored afterwards.

    Eval mode keeps BatchNorm statistics untouched; frozen parameters keep
    ``param.grad`` untouched and make backward passes cheaper.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def input_gradient(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """d(summed cross-entropy)/dx, without touching ``param.grad``; zeros where the loss does not depend on x.

    The loss is summed, not averaged, so a sample's gradient does not depend on
    the size of the batch it travels in. A model whose output does not depend on
    its input has a zero gradient, as a model that rounds its input does, rather
    than an error: the zero_gradients health probe is what reports it.
    """
    return loss_gradient(model, x, labels)[0]


def clean_logits(model: nn.Module, x: Tensor, labels: Labels) -> Tensor:
    """[N, classes] the clean logits: the engine's (``labels.logits``), else one forward pass."""
    if labels.logits is not None:
        return labels.logits
    with attack_mode(model), torch.no_grad():
        return model(x)


def ranked_targets(logits: Tensor, true: Tensor, count: int) -> Tensor:
    """The ``count`` most likely classes other than the true one, most likely first: [N, min(count, classes - 1)].

    The target classes of apgd_t and fab_t (Croce & Hein 2020). Ties go to the lower class index.
    """
    others = logits.detach().float().scatter(1, true[:, None], float("-inf"))
    return others.argsort(dim=1, descending=True, stable=True)[:, : min(count, logits.shape[1] - 1)]


def gradient_and_logits(model: nn.Module, x: Tensor, labels: Tensor, norm: Norm = "linf") -> tuple[Tensor, Tensor]:
    """The steepest-ascent direction of the summed CE (``steepest``) and the logits of that same forward.

    Early stopping reads the logits, so it costs no extra pass.
    """
    grad, logits = loss_gradient(model, x, labels)
    return steepest(grad, norm), logits


def loss_gradient(model: nn.Module, x: Tensor, labels: Tensor,
                  view: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """d(summed CE of model(view(x)))/dx and the logits of that forward; zeros where the loss does not depend on x.

    ``view`` (default: none) is a differentiable input transform the model sees instead of x, as DI's
    resize-and-pad: the gradient flows back through it to x. The logits are those of the transformed input.
    A model with a ``loss_members`` callable (an ensemble averaging losses, robench.models.ensemble) gives
    [K, N, classes] member logits: the loss is the members' mean summed CE (Liu et al. ICLR 2017, sec. 3;
    Dong et al. CVPR 2018, sec. 3.2) and the logits their mean. This is the one home of the CE loss, so
    every attack stepping on it (``Attack.ce_loss``) averages losses without a line of its own.
    """
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        seen = xg if view is None else view(xg)
        members = getattr(model, "loss_members", None)  # an ensemble averaging its members' losses
        if members is None:
            logits = model(seen)
            loss = F.cross_entropy(logits, labels.clone(), reduction="sum")
        else:
            outs = members(seen)  # [K, N, classes]
            loss = torch.stack([F.cross_entropy(o, labels.clone(), reduction="sum") for o in outs]).mean()
            logits = outs.mean(0)
        grad = torch.autograd.grad(loss, xg, allow_unused=True)[0] if loss.requires_grad else None
    return torch.zeros_like(xg) if grad is None else grad, logits.detach()


def gradient_sign(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """sign(d loss / d x) of the summed cross-entropy: the direction of every sign-gradient step."""
    return input_gradient(model, x, labels).sign()


def gradient_step(model: nn.Module, x: Tensor, labels: Tensor, norm: Norm = "linf") -> Tensor:
    """The unit step up the summed cross-entropy in ``norm``: its sign (linf) or the gradient over its L2 norm."""
    return steepest(input_gradient(model, x, labels), norm)


# --- norms: the L-infinity and L2 balls ---------------------------------------------------------------


def l2_norms(t: Tensor) -> Tensor:
    """Each sample's L2 norm over all its pixels, shaped [N, 1, 1, 1] (as many 1s as t has dims after N)."""
    return t.flatten(1).norm(p=2, dim=1).view((len(t),) + (1,) * (t.dim() - 1))


def steepest(grad: Tensor, norm: Norm) -> Tensor:
    """The direction of largest first-order gain among steps of norm 1: sign(g), or g / ||g||_2 per sample.

    A zero gradient stays zero under either norm (a masked model is the health checks' to report).
    """
    if norm == "linf":
        return grad.sign()
    return grad / l2_norms(grad).clamp_min(torch.finfo(grad.dtype).tiny)


def in_pixels(value: Eps, norm: Norm) -> Eps:
    """An eps or step size as the attack is given it, in [0, 1] pixel units: /255 for linf, as is for l2."""
    return to_unit(value) if norm == "linf" else value


@dataclass(frozen=True)
class SampleNoise:
    """Uniform noise in [-1, 1], from one reproducible stream per sample.

    A sample's noise depends on its own seed only, never on the batch it travels in,
    so a random start is the same at any batch size, after an out-of-memory split,
    on any torchrun rank, and for any eps list.
    """

    seeds: tuple[int, ...]

    def uniform_like(self, x: Tensor) -> Tensor:
        """Noise shaped like ``x`` (one row per seed), on x's device and dtype."""
        return next(self.uniform_draws(x, 1))

    def uniform_draws(self, x: Tensor, count: int) -> Iterator[Tensor]:
        """``count`` noise tensors shaped like ``x``, each row the next draws of its sample's stream
        (the first is ``uniform_like``'s), on x's device and dtype."""
        if len(self.seeds) != len(x):
            raise ValueError(f"{len(self.seeds)} noise seeds for a batch of {len(x)}")
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        for _ in range(count):
            rows = [torch.rand(x.shape[1:], generator=g) for g in gens]
            yield (torch.stack(rows) * 2 - 1).to(device=x.device, dtype=x.dtype)

    def normal_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Standard normal noise shaped like ``x`` and one uniform [0, 1) number per row ([N]), per seed."""
        if len(self.seeds) != len(x):
            raise ValueError(f"{len(self.seeds)} noise seeds for a batch of {len(x)}")
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        z = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens])
        u = torch.cat([torch.rand(1, generator=g) for g in gens])
        return z.to(device=x.device, dtype=x.dtype), u.to(device=x.device, dtype=x.dtype)

    def rows(self, index: Tensor) -> SampleNoise:
        """The streams of these samples (index: [K] positions), for work on a subset of a batch."""
        return SampleNoise(tuple(self.seeds[i] for i in index.tolist()))

    def child(self, tag: str | int) -> SampleNoise:
        """Independent streams for one part of an attack (a restart, a target class), still per sample."""
        return SampleNoise(tuple(_mix(s, str(tag)) for s in self.seeds))

    def uniform(self, step: int, count: int) -> Tensor:
        """[N, count] uniform numbers in [0, 1) for iteration ``step``: counter-based, so no per-sample loop.

        Sample i's numbers depend on (its seed, step, position) only, never on its batch
        (splitmix64 of the three; Steele et al. 2014), so a score-based attack that draws
        every iteration stays batch-invariant at the cost of a few integer operations.
        """
        seeds = np.asarray(self.seeds, dtype=np.uint64)[:, None]
        with np.errstate(over="ignore"):
            counter = np.uint64(step) * np.uint64(0x9E3779B97F4A7C15) + np.arange(count, dtype=np.uint64)[None, :]
            z = _splitmix64(_splitmix64(seeds) ^ counter)
        return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / float(2**53))


def _mix(seed: int, tag: str) -> int:
    digest = hashlib.blake2b(f"{seed}\0{tag}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sample_noise(rng: SampleNoise | torch.Generator | None, n: int) -> SampleNoise:
    """Per-sample streams for n samples: ``rng`` itself, or seeds drawn from a generator (None: seed 0)."""
    if isinstance(rng, SampleNoise):
        if len(rng.seeds) != n:
            raise ValueError(f"{len(rng.seeds)} noise seeds for a batch of {n}")
        return rng
    gen = rng if rng is not None else torch.Generator().manual_seed(0)
    return SampleNoise(tuple(int(s) for s in torch.randint(0, 2**62, (n,), generator=gen).tolist()))


def uniform_noise(x: Tensor, rng: SampleNoise | torch.Generator | None) -> Tensor:
    """Noise in [-1, 1] shaped like x: per sample from SampleNoise, else from a generator."""
    if isinstance(rng, SampleNoise):
        return rng.uniform_like(x)
    return torch.empty_like(x).uniform_(-1.0, 1.0, generator=rng)


def project(x_adv: Tensor, x: Tensor, eps: float | Tensor, norm: Norm = "linf") -> Tensor:
    """Project onto the eps-ball of ``norm`` around x (eps in [0, 1] units; a tensor: per example), then into [0, 1].

    The L2 projection scales a perturbation longer than eps back to length eps and leaves a shorter one
    as it is; clipping into [0, 1] afterwards only shortens it, so the result stays in both sets.
    """
    if norm == "linf":
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    delta = x_adv - x
    length = l2_norms(delta)
    scale = torch.where(length > eps, eps / length.clamp_min(torch.finfo(delta.dtype).tiny), torch.ones_like(length))
    return (x + delta * scale).clamp(0.0, 1.0)


def l2_ball_noise(x: Tensor, rng: SampleNoise | torch.Generator | None) -> Tensor:
    """Points drawn uniformly from the unit L2 ball (per sample, over all its pixels), shaped like x.

    A Gaussian direction scaled to radius u^(1/d), d the pixels per sample, is uniform by volume
    (Muller 1959); torchattacks' PGDL2 takes radius u, which crowds starts near the centre.
    """
    if isinstance(rng, SampleNoise):
        z, u = rng.normal_like(x)
    else:
        z = torch.randn(x.shape, generator=rng).to(device=x.device, dtype=x.dtype)
        u = torch.rand(len(x), generator=rng).to(device=x.device, dtype=x.dtype)
    radius = u.view(l2_norms(z).shape) ** (1.0 / x[0].numel())
    return z / l2_norms(z).clamp_min(torch.finfo(z.dtype).tiny) * radius


MAX_COUNT = 10_000_000  # steps, restarts, queries, targets: AutoAttack's largest is 5,000 queries
# What attack options accept (robench.core.fields; each config's type hints give the kinds). An attack left
# with nothing to do (0 steps or targets, a step size of 0) would report the clean accuracy as robustness;
# NaN passes every comparison, so it is refused by name; a count beyond MAX_COUNT never ends, or overflows
# a tensor's int64. A suite file's reader adds the file and line to the FieldError.
COUNT = Rule(low=1, high=MAX_COUNT, finite=True)  # steps, restarts, targets, queries
AT_LEAST_ONE = Rule(low=1, finite=True)  # a factor such as FAB's overshoot eta
UNIT = Rule(low=0, high=1, low_open=True, finite=True, must="be in (0, 1]")  # a share or a decay
POSITIVE = Rule(low=0, low_open=True, finite=True)  # a step size (None: the attack's default)
# step_ll and iter_ll aim at the least-likely class in the paper's L-infinity ball; no L2 version is defined
LINF_ONLY = Rule(test=lambda v: None if v == "linf" else "be linf: this attack has no L2 version")


def to_unit(eps: Eps) -> Eps:
    """Convert eps from 1/255 units to [0, 1] pixel units."""
    return eps / 255
