"""Health probes: a few samples through the model, exactly as the engine uses it, looking for gradient masking.

A model that outputs probabilities, rounds its input, leaves dropout on or sends gradients the
wrong way makes attacks fail and looks robust. Each probe runs on the run's first samples (at most
``PROBE_SAMPLES`` by default, one batch of them) in eval mode with frozen parameters (``attack_mode``)
and leaves the model's mode, flags, weights and the RNG as they were; a finding is a
``robench.analysis.health.Flag`` of the check of the same name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robench.analysis.health import UNBOUNDED_MAX_TOP1, ZERO_GRADIENT_MAX, Flag, flag
from robench.attacks import REGISTRY, Labels, attack_mode
from robench.attacks.base import input_gradient
from robench.attacks.iterative import PgdConfig
from robench.data import InputConfig, Source
from robench.engine import correct, predictions, score

PROBE_SAMPLES = 32  # default sample count: the probes' cost is fixed, not a share of the data or the batch size
UNBOUNDED_EPS = 255.0  # 1/255 units: the whole pixel range
UNBOUNDED_STEPS = 5
PROBABILITY_TOL = 1e-4  # how close rows must sum to 1 (or logsumexp to 0) to look like probabilities
RANDOM_TOL = 1e-4  # relative logit difference between two passes that counts as disagreement

ProbeFn = Callable[[nn.Module, Tensor, Tensor, Tensor], "str | None"]


def probability_outputs(model: nn.Module, x: Tensor, y: Tensor, logits: Tensor) -> str | None:
    """Do the outputs look like probabilities (rows in [0, 1] summing to 1) or log-probabilities?"""
    z = logits.double()
    if z.min() >= -PROBABILITY_TOL and z.max() <= 1 + PROBABILITY_TOL and (z.sum(1) - 1).abs().max() <= PROBABILITY_TOL:
        return "every output lies in [0, 1] and each row sums to 1: probabilities, not logits"
    if z.max() <= PROBABILITY_TOL and z.logsumexp(1).abs().max() <= PROBABILITY_TOL:
        return "every output is <= 0 and each row's logsumexp is 0: log-probabilities, not logits"
    return None


def zero_gradients(model: nn.Module, x: Tensor, y: Tensor, logits: Tensor) -> str | None:
    """Is the share of exactly-zero input-gradient entries above ZERO_GRADIENT_MAX?"""
    share = float((input_gradient(model, x, y) == 0).float().mean())
    if share > ZERO_GRADIENT_MAX:
        return f"{share:.0%} of the input-gradient entries are exactly zero (more than {ZERO_GRADIENT_MAX:.0%})"
    return None


def randomized_outputs(model: nn.Module, x: Tensor, y: Tensor, logits: Tensor) -> str | None:
    """Does a second forward pass of the same batch give other logits?"""
    again = score(model, x)
    diff = float((again - logits).abs().nan_to_num(0.0).max())
    scale = max(1.0, float(logits.abs().nan_to_num(0.0).max()))
    if diff <= RANDOM_TOL * scale:
        return None
    changed = int((again.argmax(1) != logits.argmax(1)).sum())
    return (f"two forward passes in eval mode differ by up to {diff:.3g} in the logits; "
            f"{changed} of {len(x)} predictions change")


def unbounded_attack_fails(model: nn.Module, x: Tensor, y: Tensor, logits: Tensor) -> str | None:
    """Does pgd at eps 255/255 (no random start) leave more than UNBOUNDED_MAX_TOP1 of the batch correct?"""
    config = PgdConfig(steps=UNBOUNDED_STEPS, random_start=False)
    ((_, x_adv),) = REGISTRY["pgd"].run(model, x, Labels.from_logits(logits, y), [UNBOUNDED_EPS], config, None)
    pred, _ = predictions(score(model, x_adv), y)  # NaN logits are never correct (argmax would say class 0)
    top1 = float(correct(pred, y.cpu().numpy()).mean())
    if top1 > UNBOUNDED_MAX_TOP1:
        return (f"pgd ({UNBOUNDED_STEPS} steps) at eps 255/255 leaves {top1:.0%} of {len(x)} probe samples "
                f"correct; an unbounded attack should reach about 0%")
    return None


PROBES: dict[str, ProbeFn] = {
    "probability_outputs": probability_outputs,
    "zero_gradients": zero_gradients,
    "randomized_outputs": randomized_outputs,
    "unbounded_attack_fails": unbounded_attack_fails,
}
PROBE_AT = {"unbounded_attack_fails": ("pgd", UNBOUNDED_EPS)}  # the attack and eps a probe's flag names


def probe(model: nn.Module, images: Tensor, labels: Tensor, label: str) -> list[Flag]:
    """Run every probe on one batch of [0, 1] images; the model's mode, flags, weights and the RNG are kept.

    The model is probed as the engine uses it: eval mode, parameters frozen.
    """
    device = next(model.parameters()).device
    x, y = images.to(device), labels.to(device)
    flags = []
    with attack_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        logits = score(model, x)
        for name, fn in PROBES.items():
            message = fn(model, x, y, logits)
            if message is not None:
                flags.append(flag(name, label, message, *PROBE_AT.get(name, (None, None))))
    return flags


def first_samples(source: Source, cfg: InputConfig, n: int) -> tuple[Tensor, Tensor] | None:
    """The run's first ``n`` samples in id order (all of them if fewer), as [0, 1] images and labels; None if none.

    Read in batches of ``n``: the run's batch size and rank count never change which samples are probed.
    """
    images, labels = [], []
    for batch in source.batches(cfg, n):
        images.append(batch.images)
        labels.append(batch.labels)
        if sum(len(y) for y in labels) >= n:  # skipped unreadable images can leave a batch short
            break
    if not labels:
        return None
    return torch.cat(images)[:n], torch.cat(labels)[:n]


def probe_first(model: nn.Module, source: Source, cfg: InputConfig, samples: int,
                label: str) -> tuple[list[Flag], int]:
    """Run every probe on the first ``samples`` samples of ``source``; the flags and the number of samples probed."""
    first = first_samples(source, cfg, samples)
    if first is None:
        return [], 0
    return probe(model, *first, label), len(first[1])
