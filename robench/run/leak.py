"""Label leaking (Kurakin et al. 2017, section 4.1): does the true label help the model?

A model trained on FGSM examples crafted with the *true* label can learn to read the
label back out of the perturbation, and then scores higher on those examples than on
clean ones. leak-check runs, on the same images, clean, fgsm with true labels, fgsm
with the model's predicted labels and step_ll, and compares them sample by sample:

- ``leak_gap = acc(fgsm_true) - acc(fgsm_predicted)``: > 0 means the true label makes the
  attack weaker, the signature of leaking (the two attacks are identical wherever the
  model is right when clean, so only clean mistakes can separate them);
- ``adv_minus_clean = acc(fgsm_true) - acc(clean)``: > 0 is the paper's symptom.

Verdict per model: LEAK when any gap is significantly > 0 (exact one-sided McNemar
tests, Holm-corrected over the 2 x eps tests at ``alpha``); OK when every gap's upper
confidence bound (Bonett-Price, simultaneous by Bonferroni) is at most ``margin``;
INCONCLUSIVE otherwise, which is what too few samples give.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from robench.analysis import health
from robench.attacks.suite import CLEAN, AttackSpec, Suite, build_config
from robench.core.distributed import LOCAL, Dist
from robench.core.fields import Rule, check
from robench.core.stats import PairedDiff, holm, paired
from robench.engine import Outcomes, Progress, Status
from robench.errors import FieldNote
from robench.results import samples
from robench.results.provenance import plain_config
from robench.run.evaluate import EvalConfig, run_eval
from robench.run.runspec import RunSpec

FGSM_TRUE, FGSM_PREDICTED, STEP_LL = "fgsm_true", "fgsm_predicted", "step_ll"
LEAK, OK, INCONCLUSIVE = "LEAK", "OK", "INCONCLUSIVE"
GAPS = ("leak_gap", "adv_minus_clean")
DEFAULT_EPS = (2, 4, 8, 16)
DEFAULT_MODELS = ("zoo:effnet-fgsm-true", "zoo:effnet-fgsm-pred", "zoo:effnet-stepll")

DEFINITIONS = {
    "clean_top1": "top-1 accuracy on clean images",
    "fgsm_true_top1": "top-1 accuracy under fgsm crafted with the true labels",
    "fgsm_predicted_top1": "top-1 accuracy under fgsm crafted with the model's clean predictions as labels",
    "step_ll_top1": "top-1 accuracy under step_ll (toward the least-likely class; uses no label)",
    "leak_gap": "fgsm_true_top1 - fgsm_predicted_top1; > 0 is the signature of label leaking",
    "adv_minus_clean": "fgsm_true_top1 - clean_top1; > 0 is the paper's symptom of label leaking",
    "*_low, *_high": "simultaneous confidence interval of the gap (Bonett-Price, Bonferroni over 2 x eps gaps)",
    "*_p": "exact one-sided McNemar p-value for gap > 0",
    "*_significant": "the gap is > 0 after Holm's correction over the model's 2 x eps tests at alpha",
    "verdict": "LEAK: a gap is significantly > 0; OK: every gap's upper bound <= margin; else INCONCLUSIVE",
    "n": "number of samples",
}
COLUMNS = ["model", "eps", "clean_top1", "fgsm_true_top1", "fgsm_predicted_top1", "step_ll_top1",
           *(f"{g}{s}" for g in GAPS for s in ("", "_low", "_high", "_p", "_significant")), "n", "verdict"]


def training_eps(specs: tuple[str, ...]) -> dict[str, float]:
    """Each model's training eps (1/255; its checkpoint's recipe ``eps_max``), by label; models without one left out.

    ``specs`` are model specs (empty: the default models). Raises RobenchError for a spec whose
    checkpoint cannot be read.
    """
    from robench.models.load import checkpoint_training_eps
    from robench.run.runspec import parse_specs

    found = {spec.label: checkpoint_training_eps(spec) for spec in parse_specs(specs or DEFAULT_MODELS)}
    return {label: eps for label, eps in found.items() if eps is not None}


def default_eps(specs: tuple[str, ...]) -> tuple[float, ...]:
    """DEFAULT_EPS, then each model's training eps that the list lacks, in 1/255 units.

    A model leaks at the eps it was trained at: FGSM training on true labels at a fixed 0.3 px
    (76.5/255) leaks there and not at 8/255 (docs/leak.md), so a default of small eps alone
    would call it OK. Raises RobenchError for a spec whose checkpoint cannot be read.
    """
    return tuple(dict.fromkeys([*(float(e) for e in DEFAULT_EPS), *training_eps(specs).values()]))


def untested_training_eps(specs: tuple[str, ...], eps: tuple[float, ...]) -> list[FieldNote]:
    """A note for each model whose training eps (its checkpoint's recipe) is not among ``eps`` (1/255 units).

    A model trained at 0.3 px and checked only at 8 and 16 gets OK while it leaks at 76.5 (docs/leak.md).
    Raises RobenchError for a spec whose checkpoint cannot be read.
    """
    return [FieldNote(f"model '{label}' was adversarially trained at eps up to {trained:g}/255 (its checkpoint "
                      f"says), which is not among the eps checked; a model leaks at the eps it was trained at: add "
                      f"{trained:g} to {{eps}}, or leave {{eps}} out", "eps")
            for label, trained in training_eps(specs).items() if not any(abs(trained - e) < 1e-9 for e in eps)]


def leak_suite(eps: tuple[float, ...]) -> Suite:
    """The three attacks leak-check compares, at every eps (1/255 units)."""
    return Suite((
        AttackSpec(FGSM_TRUE, "fgsm", eps, build_config("fgsm", {"label": "true"})),
        AttackSpec(FGSM_PREDICTED, "fgsm", eps, build_config("fgsm", {"label": "predicted"})),
        AttackSpec(STEP_LL, "step_ll", eps, build_config("step_ll", {})),
    ), "<leak-check>")


LEAK_FIELDS = {  # robench.core.fields; NaN fails every comparison: refused by name, not judged with
    "eval": Rule(EvalConfig, "an EvalConfig (robench.run.evaluate)"),
    "alpha": Rule(float, "a number in (0, 1)", low=0, high=1, low_open=True, high_open=True,
                  must="be a number in (0, 1)"),
    "margin": Rule(float, "a number in [0, 1]", low=0, high=1, must="be a number in [0, 1]"),
}


@dataclass(frozen=True)
class LeakConfig:
    """The evaluation to run (its suite is ``leak_suite``) and how verdicts are judged."""

    eval: EvalConfig = field(default_factory=lambda: EvalConfig(DEFAULT_MODELS, RunSpec(suite=leak_suite(DEFAULT_EPS))))
    alpha: float = 0.05  # family-wise error rate of the LEAK verdict, per model
    margin: float = 0.02  # largest gap (accuracy share) an OK verdict tolerates

    def __post_init__(self) -> None:
        check(self, LEAK_FIELDS)

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return plain_config(self)


@dataclass(frozen=True)
class Judged:
    """A model's verdict and, per (eps, gap), whether the gap is significantly > 0."""

    verdict: str
    significant: dict[tuple[float, str], bool]


def gaps(out: Outcomes, eps: float, confidence: float) -> dict[str, PairedDiff]:
    """The two gaps at one eps, compared sample by sample."""
    ok = {a: c for (a, e), c in zip(out.settings, out.correct(), strict=True) if a == CLEAN or e == eps}
    return {
        "leak_gap": paired(ok[FGSM_PREDICTED], ok[FGSM_TRUE], confidence),
        "adv_minus_clean": paired(ok[CLEAN], ok[FGSM_TRUE], confidence),
    }


def judge(by_eps: dict[float, dict[str, PairedDiff]], alpha: float, margin: float) -> Judged:
    """LEAK, OK or INCONCLUSIVE from every gap of one model (see the module docstring)."""
    keys = [(e, g) for e in by_eps for g in GAPS]
    reject = holm([by_eps[e][g].p_greater for e, g in keys], alpha)
    significant = dict(zip(keys, reject, strict=True))
    if any(reject):
        return Judged(LEAK, significant)
    bounded = all(by_eps[e][g].high <= margin for e, g in keys)
    return Judged(OK if bounded else INCONCLUSIVE, significant)


def confidence_for(n_eps: int, alpha: float) -> float:
    """Per-interval confidence so that all 2 x eps intervals hold together with 1 - alpha."""
    return 1 - alpha / (len(GAPS) * n_eps)


def summarize(out: Outcomes, model: str, alpha: float, margin: float) -> tuple[pd.DataFrame, str]:
    """Tidy rows (one per eps) and the model's verdict."""
    eps_values = sorted({e for a, e in out.settings if a != CLEAN})
    confidence = confidence_for(len(eps_values), alpha)
    by_eps = {e: gaps(out, e, confidence) for e in eps_values}
    judged = judge(by_eps, alpha, margin)
    top1 = {(a, e): float(c.mean()) for (a, e), c in zip(out.settings, out.correct(), strict=True)}
    rows = []
    for e in eps_values:
        row: dict[str, Any] = {"model": model, "eps": e, "clean_top1": top1[(CLEAN, 0.0)]}
        row |= {f"{a}_top1": top1[(a, e)] for a in (FGSM_TRUE, FGSM_PREDICTED, STEP_LL)}
        for g, d in by_eps[e].items():
            row |= {g: d.diff, f"{g}_low": d.low, f"{g}_high": d.high, f"{g}_p": d.p_greater,
                    f"{g}_significant": judged.significant[(e, g)]}
        rows.append(row | {"n": len(out.ids), "verdict": judged.verdict})
    return pd.DataFrame(rows, columns=COLUMNS), judged.verdict


@dataclass
class LeakResult:
    """Tidy rows (one per model x eps), a verdict per model, outcomes and provenance."""

    rows: pd.DataFrame
    verdicts: dict[str, str]
    outcomes: dict[str, Outcomes]
    meta: dict[str, Any]
    health: list[health.Flag] = field(default_factory=list)  # the eval's health flags; also meta["health"]

    @property
    def leaking(self) -> list[str]:
        """Labels of the models judged LEAK."""
        return [m for m, v in self.verdicts.items() if v == LEAK]

    def packed_samples(self) -> dict[str, Any]:
        """Packed per-sample top-1 correctness of every setting (for results files)."""
        return samples.from_outcomes(self.outcomes)


def run_leak_check(cfg: LeakConfig, progress: Progress | None = None, warn: Callable[[str], None] | None = None,
                   dist: Dist = LOCAL, status: Status | None = None) -> LeakResult | None:
    """Measure label leaking for every model; rows, verdicts and a results envelope.

    Under torchrun, rank 0 gets the result and the other ranks None (see ``run_eval``).
    """
    ev = run_eval(dataclasses.replace(cfg.eval, worst=False), progress, warn, dist, status, "leak-check")
    if ev is None:
        return None
    tables, verdicts = [], {}
    for model, out in ev.outcomes.items():
        rows, verdicts[model] = summarize(out, model, cfg.alpha, cfg.margin)
        tables.append(rows)
    meta = {**ev.meta, "command": "leak-check", "config": cfg.describe(), "metrics": DEFINITIONS,
            "verdicts": verdicts, "health": health.records(ev.health)}
    return LeakResult(pd.concat(tables, ignore_index=True), verdicts, ev.outcomes, meta, ev.health)

