"""Metrics: one definition each, named in every output."""

from __future__ import annotations

import numpy as np
import pandas as pd

from robench.attacks.suite import CLEAN
from robench.engine import Outcomes, correct

DEFINITIONS = {
    "top1": "share of samples whose top-1 prediction is the true label",
    "top5": "share of samples whose true label is among the 5 highest logits",
    "success_rate": (
        "among samples the model classifies correctly when clean (top-1), the share whose "
        "adversarial example it misclassifies; null (an empty denominator) on clean rows and when the model "
        "classifies no sample correctly when clean"
    ),
    "n": "number of samples",
    "units": "accuracies and rates are shares in [0, 1] in files; the terminal's tables show them as %",
    "worst": (
        "attack 'worst': robust accuracy as the per-sample worst case; a sample counts only if the model "
        "classifies it correctly clean and under every attack of the suite at that eps"
    ),
    "min_eps": "per sample: the smallest eps (1/255 units) at which any attack fooled it; 0 if wrong clean",
    "cost": (
        "per model and attack: the forward and backward passes crafting took, summed over samples (a pass over "
        "a batch of B counts B; divide by n for passes per sample)"
    ),
    "linf_max": (
        "the largest ||x_adv - x||_inf over the samples, in 1/255 units (at most eps for a sound attack; "
        "0 for clean rows)"
    ),
}
ROW_COLUMNS = ["model", "attack", "eps", "top1", "top5", "success_rate", "n", "linf_max"]


def success_rate(clean_pred: np.ndarray, adv_pred: np.ndarray, labels: np.ndarray) -> float:
    """Attack success among clean-correct samples; NaN when none is clean-correct."""
    ok = correct(clean_pred, labels)
    if not ok.any():
        return float("nan")
    return float((~correct(adv_pred[ok], labels[ok])).mean())


def summarize(out: Outcomes, model: str) -> pd.DataFrame:
    """Tidy rows: one per (model, attack, eps), clean first as attack "clean", eps 0."""
    rows = []
    for s, (attack, eps) in enumerate(out.settings):
        rows.append({
            "model": model, "attack": attack, "eps": eps,
            "top1": float(correct(out.pred[s], out.labels).mean()),
            "top5": float(out.top5[s].mean()),
            "success_rate": float("nan") if attack == CLEAN else success_rate(out.pred[0], out.pred[s], out.labels),
            "n": len(out.ids),
            "linf_max": round(float(out.linf[s].max(initial=0.0)), 6),
        })
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def per_sample(out: Outcomes, model: str) -> pd.DataFrame:
    """Tidy per-sample rows: id, model, attack, eps, label, pred, top1 and top5 correctness."""
    s, n = out.pred.shape
    return pd.DataFrame({
        "id": np.tile(np.asarray(out.ids, dtype=object), s),
        "model": model,
        "attack": np.repeat([a for a, _ in out.settings], n),
        "eps": np.repeat([e for _, e in out.settings], n),
        "label": np.tile(out.labels, s),
        "pred": out.pred.reshape(-1),
        "top1_correct": correct(out.pred, out.labels).reshape(-1),
        "top5_correct": out.top5.reshape(-1),
    })


TRANSFER_DEFINITIONS = {
    "target_top1": "top-1 accuracy of the target on the source's adversarial examples",
    "target_top5": "top-5 accuracy of the target on the source's adversarial examples",
    "target_error": "1 - target_top1: the target's error on every sample's example, unconditioned",
    "transfer_rate": (
        "the paper's transfer rate (Kurakin et al. 2017, sec. 4.2; the 'prefiltered case' of Kurakin et al. 2016): "
        "among samples the source classifies correctly when clean and wrongly on its adversarial example, the share "
        "the target classifies wrongly on that example; null (an empty denominator) when there are none and on "
        "clean rows"
    ),
    "n_fooled_source": "the number of such samples: transfer_rate's denominator (null on clean rows)",
    "transfer_rate_both_clean": (
        "transfer_rate also requiring the target to classify the sample correctly when clean (robench's "
        "transfer_rate before schema 2): among samples both models classify correctly when clean and whose "
        "example fools the source, the share that also fools the target; null when there are none and on clean rows"
    ),
    "n_fooled_source_both_clean": "the number of such samples: transfer_rate_both_clean's denominator",
    "targeted_success_rate": (
        "a targeted run's (target_class random or least_likely): the share of all samples whose adversarial "
        "example the target classifies as the sample's target class (the class the source's attack aimed at; "
        "TransferAttack's targeted success rate), unconditioned; null on clean rows and in untargeted runs"
    ),
    "n": "number of samples",
    "units": "accuracies and rates are shares in [0, 1] in files; the terminal's tables show them as %",
    "null": "an empty value (a rate whose denominator is 0, a count on a clean row); files never hold NaN",
}
TRANSFER_COLUMNS = ["source", "target", "attack", "eps", "target_top1", "target_top5", "target_error",
                    "transfer_rate", "n_fooled_source", "transfer_rate_both_clean", "n_fooled_source_both_clean",
                    "targeted_success_rate", "n"]


def transfer_rates(clean_source: np.ndarray, clean_target: np.ndarray, adv_source: np.ndarray,
                   adv_target: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """The two transfer rates of TRANSFER_DEFINITIONS with their denominators (a rate is NaN when its is 0).

    Inputs are top-1 predictions, each [N]: the source's and the target's on clean inputs and on
    the source's adversarial examples. The paper's rate conditions on the source only.
    """
    prefiltered = correct(clean_source, labels) & ~correct(adv_source, labels)
    both_clean = prefiltered & correct(clean_target, labels)
    out: dict[str, float | int] = {}
    for name, keep in (("transfer_rate", prefiltered), ("transfer_rate_both_clean", both_clean)):
        n = int(keep.sum())
        out[name] = float((~correct(adv_target[keep], labels[keep])).mean()) if n else float("nan")
        out[name.replace("transfer_rate", "n_fooled_source")] = n
    return out


def targeted_success_rate(adv_target: np.ndarray, goal: np.ndarray) -> float:
    """TRANSFER_DEFINITIONS' targeted_success_rate: the share of all samples the target puts in their goal class.

    ``adv_target``: the target's top-1 predictions on the examples, ``goal``: each sample's target
    class, both [N]; NaN for an untargeted run (goals of -1) or no samples.
    """
    if not len(goal) or (goal < 0).any():
        return float("nan")
    return float((adv_target == goal).mean())
