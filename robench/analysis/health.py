"""Evaluation health checks: red flags that a robustness number comes from a broken evaluation.

A model that masks its gradients (probabilities for logits, rounding in its forward
pass, dropout left on), a wrong preprocessing or a weak attack all produce high
accuracies under attack that look like robustness. Each check looks for one symptom
and says, in one line, what it found; the docs page ``docs/health.md`` says what each
means and what to do, under one heading per check (every flag's ``docs`` links there).

Two kinds of check, one list of them (``CHECKS``) and one kind of finding (``Flag``):

- *probes* (robench.analysis.probes) run on one batch with the model exactly as the engine uses it;
- *result checks* (here) read the rows (and, where known, the per-sample outcomes) of a run.

Comparisons between two settings on the same samples are judged by the exact one-sided
McNemar test (``robench.core.stats.paired``), Holm-corrected over the comparisons a check
makes in one run, so a difference of a sample or two is never a flag. Without per-sample
outcomes they fall back to Fisher's exact test on the two accuracies, which ignores the
pairing and so flags less.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robench.attacks import REGISTRY
from robench.attacks.suite import CLEAN, AttackSpec, Suite
from robench.core.stats import exact_interval, holm, paired
from robench.engine import NONFINITE, Outcomes, correct
from robench.errors import FieldError

DOCS = "docs/health.md"  # the docs page with one section (anchor) per check, named as the check
ALPHA = 0.05  # family-wise error of a check's comparisons in one run (Holm)
UNBOUNDED_MAX_TOP1 = 0.10  # an unbounded attack leaving more than this correct is a flag (robench.analysis.probes)
ZERO_GRADIENT_MAX = 0.5  # share of exactly-zero input-gradient entries above which a probe flags
LINF_TOL = 1e-4  # 1/255 units: float slack on ||x_adv - x||_inf <= eps
BLACK_BOX_MIN_SHARE = 0.01  # share of samples a black box alone fools above which it is a flag (and 2 samples)


@dataclass(frozen=True)
class Check:
    """A health check: its name (used in results and as its anchor in DOCS) and what a flag means."""

    name: str
    summary: str

    @property
    def docs(self) -> str:
        """Where the docs explain this check: DOCS at the check's anchor."""
        return f"{DOCS}#{self.name}"


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("accuracy_rises_with_eps", "accuracy under an attack rises as eps grows; a larger budget can only help "
          "a sound attack"),
    Check("iterative_weaker_than_single_step", "an iterative attack does worse than its single-step counterpart "
          "at the same eps, so the iterations are not working"),
    Check("transfer_beats_white_box", "examples crafted on another model fool this one more than its own "
          "white-box attack does: its gradients mislead the attack"),
    Check("unbounded_attack_fails", f"pgd at eps 255/255 leaves more than {UNBOUNDED_MAX_TOP1:.0%} of a batch "
          "correct, where an unbounded attack should reach about 0%"),
    Check("probability_outputs", "the model outputs probabilities or log-probabilities, not logits; "
          "cross-entropy on probabilities saturates and starves gradient attacks"),
    Check("zero_gradients", f"more than {ZERO_GRADIENT_MAX:.0%} of the input-gradient entries are exactly zero "
          "(rounding, quantization or another step without a gradient)"),
    Check("randomized_outputs", "two forward passes of the same input disagree in eval mode (dropout left on, "
          "or other randomness): attacks chase noise"),
    Check("perturbation_exceeds_eps", "a measured ||x_adv - x||_inf exceeds the attack's eps: the examples left "
          "the threat model"),
    Check("black_box_beats_white_box", "a score-based black-box attack (square) fools samples that every gradient "
          "attack of the suite missed at the same eps: the gradients are masked (AutoAttack's own check)"),
    Check("clean_accuracy_mismatch", "clean accuracy differs from the reference given beyond sampling noise "
          "(wrong weights, normalization, resolution or labels)"),
    Check("cheaper_suite_missed", "the full AutoAttack fools survivors of a suite that takes shortcuts (fewer "
          "targets or queries): the suite was too greedy and its robust accuracy is overstated"),
    Check("nonfinite_logits", "the model gave NaN or inf logits, clean or under attack: those samples count as "
          "wrong, so its accuracies measure the numerics, not robustness"),
)}


@dataclass(frozen=True)
class Flag:
    """One red flag: which check, where, what was found, and where the docs explain it."""

    check: str
    model: str
    attack: str | None
    eps: float | None
    message: str
    docs: str

    def record(self) -> dict[str, Any]:
        """The JSON form: {check, model, attack, eps, message, docs}."""
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One line for a warning: model, attack and eps, the message and the docs link."""
        where = ", ".join(p for p in (self.model, " ".join(q for q in (self.attack, _eps(self.eps)) if q)) if p)
        return f"{self.check} ({where}): {self.message} (see {self.docs})"


def flag(check: str, model: str, message: str, attack: str | None = None, eps: float | None = None) -> Flag:
    """A Flag of a registered check, with its docs link."""
    return Flag(check, model, attack, None if eps is None else float(eps), message, CHECKS[check].docs)


def records(flags: Iterable[Flag]) -> list[dict[str, Any]]:
    """Flags as the ``health`` section of a results file (an empty list when all is well)."""
    return [f.record() for f in flags]


def _eps(eps: float | None) -> str:
    return "" if eps is None else f"eps {eps:g}"


# --- comparisons of two settings on the same samples ----------------------------------------------

Correct = Mapping[tuple[Any, ...], np.ndarray]  # row key -> per-sample success (True/False) under that row


def correctness(outcomes: Mapping[str, Outcomes]) -> dict[tuple[str, str, float], np.ndarray]:
    """Per-sample top-1 correctness keyed (model, attack, eps), for the paired tests."""
    return {(m, a, float(e)): ok for m, o in outcomes.items()
            for (a, e), ok in zip(o.settings, o.correct(), strict=True)}


def p_better(worse: np.ndarray, better: np.ndarray) -> tuple[float, str]:
    """Exact one-sided p-value that ``better`` succeeds more often than ``worse`` (same samples), and the counts."""
    d = paired(worse, better)
    return d.p_greater, f"{d.gained} samples better, {d.lost} worse"


def p_better_unpaired(worse: float, better: float, n: int) -> tuple[float, str]:
    """Fisher's exact one-sided p-value from two success shares of n samples each (pairing unknown)."""
    from scipy.stats import fisher_exact

    kw, kb = round(worse * n), round(better * n)
    _, p = fisher_exact([[kb, n - kb], [kw, n - kw]], alternative="greater")
    return float(p), f"{kb} vs {kw} of {n}, unpaired"


@dataclass(frozen=True)
class _Candidate:
    """A comparison that may become a flag: its p-value, its group (one flag per group) and the flag."""

    p: float
    group: tuple[Any, ...]
    flag: Flag


def significant(candidates: list[_Candidate], alpha: float = ALPHA) -> list[Flag]:
    """Holm over all candidates; then one flag per group, the most significant one."""
    keep = holm([c.p for c in candidates], alpha)
    best: dict[tuple[Any, ...], _Candidate] = {}
    for c, k in zip(candidates, keep, strict=True):
        if k and (c.group not in best or c.p < best[c.group].p):
            best[c.group] = c
    return [c.flag for c in best.values()]


def _compare(worse_key: tuple, better_key: tuple, worse: float, better: float, n: int,
             correct: Correct | None) -> tuple[float, str]:
    """Paired when both keys have per-sample outcomes, else unpaired."""
    if correct is not None and worse_key in correct and better_key in correct:
        return p_better(correct[worse_key], correct[better_key])
    return p_better_unpaired(worse, better, n)


# --- result checks --------------------------------------------------------------------------------

def accuracy_rises(rows: pd.DataFrame, correct: Correct | None = None, alpha: float = ALPHA) -> list[Flag]:
    """Check 1: top-1 under an attack significantly higher at a larger eps (clean counts as eps 0).

    ``rows``: eval rows (model, attack, eps, top1, n); ``correct``: per-sample correctness keyed
    (model, attack, eps), e.g. ``correctness(outcomes)``. One flag per (model, attack).
    """
    candidates = []
    for model, group in rows.groupby("model", sort=False):
        clean = group[group["attack"] == CLEAN]
        for attack, g in group[group["attack"] != CLEAN].groupby("attack", sort=False):
            series = pd.concat([clean, g.sort_values("eps")])
            candidates += _rises(str(model), str(attack), list(series.itertuples()), correct)
    return significant(candidates, alpha)


def _rises(model: str, attack: str, series: list[Any], correct: Correct | None) -> list[_Candidate]:
    out = []
    for i, lo in enumerate(series):
        for hi in series[i + 1:]:
            if hi.eps <= lo.eps or hi.top1 <= lo.top1:
                continue
            keys = (model, lo.attack, lo.eps), (model, hi.attack, hi.eps)
            p, counts = _compare(*keys, lo.top1, hi.top1, hi.n, correct)
            where = "clean" if lo.attack == CLEAN else f"eps {lo.eps:g}"
            message = (f"top-1 under {attack} rises from {lo.top1:.3f} ({where}) to {hi.top1:.3f} at eps {hi.eps:g} "
                       f"({counts}; p = {p:.2g})")
            out.append(_Candidate(p, (model, attack), flag("accuracy_rises_with_eps", model, message, attack, hi.eps)))
    return out


def counterparts(suite: Suite) -> list[tuple[AttackSpec, AttackSpec]]:
    """(iterative, single-step) pairs of the suite: each attack with its registered counterpart of the same label.

    With the registry's attacks: bim and pgd with fgsm, iter_ll with step_ll.
    """
    def label(spec: AttackSpec) -> str | None:
        return getattr(spec.config, "label", None)

    return [(it, one) for it in suite.attacks for one in suite.attacks
            if REGISTRY[it.name].counterpart == one.name and label(it) == label(one)]


def success(out: Outcomes, setting: int, toward: np.ndarray | None) -> np.ndarray:
    """Per-sample success of an attack on its own objective: misclassified, or the class it aims at (toward: [N])."""
    if toward is not None:
        return out.pred[setting] == toward
    return ~correct(out.pred[setting], out.labels)


def iterative_weaker(outcomes: Mapping[str, Outcomes], suite: Suite, alpha: float = ALPHA) -> list[Flag]:
    """Check 2: an iterative attack significantly less successful than its single-step counterpart, same eps.

    Success is judged on the attack's own objective: misclassification for bim and pgd
    against fgsm, reaching the least-likely class for iter_ll against step_ll (iter l.l. can
    leave top-1 higher than step l.l. and still be the stronger targeted attack), and reaching
    the target class for bim and pgd against fgsm in a targeted run (all three ``label: target``).
    """
    candidates = []
    for model, out in outcomes.items():
        index = {s: i for i, s in enumerate(out.settings)}
        for it, one in counterparts(suite):
            for e in sorted(set(it.eps) & set(one.eps) - {0.0}):
                candidates.append(_weaker(model, out, it, one, index[(it.id, e)], index[(one.id, e)], e))
    return significant(candidates, alpha)


def _weaker(model: str, out: Outcomes, it: AttackSpec, one: AttackSpec, i: int, j: int, eps: float) -> _Candidate:
    aimed = getattr(it.config, "label", None) == "target"  # a targeted run's: toward each sample's target class
    toward = out.least_likely if REGISTRY[it.name].targeted else out.goal if aimed else None
    s_it, s_one = success(out, i, toward), success(out, j, toward)
    p, counts = p_better(s_it, s_one)
    goal = "reaches the target class on" if aimed else "reaches the least-likely class on" if toward is not None \
        else "fools"
    message = (f"{it.id} {goal} {s_it.mean():.1%} of samples at eps {eps:g}, {one.id} {s_one.mean():.1%} "
               f"({counts} for {one.id}; p = {p:.2g})")
    return _Candidate(p, (model, it.id, one.id), flag("iterative_weaker_than_single_step", model, message, it.id, eps))


def transfer_beats_white_box(rows: pd.DataFrame, correct: Correct | None = None, alpha: float = ALPHA) -> list[Flag]:
    """Check 3: a target's top-1 on another source's examples significantly below its white-box top-1.

    ``rows``: transfer rows (source, target, attack, eps, target_top1, n); ``correct``: per-sample
    correctness keyed (source, target, attack, eps). One flag per (target, source, attack).
    """
    adv = rows[rows["attack"] != CLEAN]
    white = {(r.target, r.attack, r.eps): r for r in adv[adv["source"] == adv["target"]].itertuples()}
    candidates = []
    for r in adv[adv["source"] != adv["target"]].itertuples():
        w = white.get((r.target, r.attack, r.eps))
        if w is None or r.target_top1 >= w.target_top1:
            continue
        p, counts = _compare((r.source, r.target, r.attack, r.eps), (w.source, w.target, w.attack, w.eps),
                             r.target_top1, w.target_top1, r.n, correct)
        message = (f"{r.attack} examples from {r.source} leave {r.target_top1:.3f} top-1 at eps {r.eps:g}, "
                   f"below the white-box {w.target_top1:.3f} ({counts}; p = {p:.2g})")
        group = (r.target, r.source, r.attack)
        candidates.append(_Candidate(p, group, flag("transfer_beats_white_box", r.target, message, r.attack, r.eps)))
    return significant(candidates, alpha)


def black_box_beats_white_box(outcomes: Mapping[str, Outcomes], suite: Suite) -> list[Flag]:
    """Check 10: samples a black-box attack fools although every gradient attack at that eps missed them.

    With full gradients a black box should find next to nothing the white-box attacks missed;
    AutoAttack warns on the same symptom. Flags when such samples are at least
    BLACK_BOX_MIN_SHARE of n and at least 2. Works on full and cascade rows alike (a cascade
    row that is right has survived every stage before it).
    """
    kinds = {a.id: REGISTRY[a.name].black_box for a in suite.attacks}
    flags = []
    for model, out in outcomes.items():
        ok = out.correct()
        for e in sorted({float(e) for a in suite.attacks for e in a.eps} - {0.0}):
            at = {a: i for i, (a, x) in enumerate(out.settings) if a in kinds and float(x) == e}
            white = [i for a, i in at.items() if not kinds[a]]
            for attack, i in ((a, i) for a, i in at.items() if kinds[a] and white):
                alone = ok[0] & ok[white].all(0) & ~ok[i]
                k = int(alone.sum())
                if k >= 2 and k >= BLACK_BOX_MIN_SHARE * len(alone):
                    flags.append(flag("black_box_beats_white_box", model,
                                      f"{attack} fools {k} samples ({k / len(alone):.1%}) that all {len(white)} "
                                      "gradient attacks missed", attack, e))
    return flags


def perturbation_exceeds_eps(rows: pd.DataFrame) -> list[Flag]:
    """Check 8: a row whose ``linf_max`` (1/255 units) exceeds its eps by more than LINF_TOL."""
    if "linf_max" not in rows:
        return []
    over = rows[(rows["attack"] != CLEAN) & (rows["linf_max"] > rows["eps"] + LINF_TOL)]
    return [flag("perturbation_exceeds_eps", str(r.model), f"max ||x_adv - x||_inf is {r.linf_max:.4g}/255, above "
                 f"eps {r.eps:g}/255", str(r.attack), r.eps) for r in over.itertuples()]


def nonfinite_logits(outcomes: Iterable[tuple[str, Outcomes]]) -> list[Flag]:
    """Check 11: samples whose logits were NaN or inf, clean or under any attack; one flag per model.

    ``outcomes``: (model, its outcomes) pairs; a model may come more than once (a transfer
    target, once per source: the same samples, so a sample counts once).
    """
    clean: dict[str, np.ndarray] = {}
    attacked: dict[str, np.ndarray] = {}
    for model, out in outcomes:
        bad = out.pred == NONFINITE  # [S, N]
        at_clean = np.array([a == CLEAN for a, _ in out.settings])
        clean[model] = clean.get(model, False) | bad[at_clean].any(0)
        attacked[model] = attacked.get(model, False) | bad[~at_clean].any(0)
    flags = []
    for model, c in clean.items():
        k, a = int((c | attacked[model]).sum()), int((attacked[model] & ~c).sum())
        if k:
            flags.append(flag("nonfinite_logits", model, f"{k} of {len(c)} samples gave NaN or inf logits "
                              f"({int(c.sum())} clean, {a} more only under attack); they count as wrong"))
    return flags


def check_refs(refs: Mapping[str, float], labels: Iterable[str]) -> None:
    """Every reference must name a model of the run (a typo would silently check nothing)."""
    known = list(labels)
    unknown = next((r for r in refs if r not in known), None)
    if unknown is not None:
        raise FieldError("clean_refs", f"{{name}} names '{unknown}', which is not a model; labels: {', '.join(known)}")


def clean_accuracy_mismatch(rows: pd.DataFrame, refs: Mapping[str, float], tol: float | None = None) -> list[Flag]:
    """Check 9: clean top-1 against a reference share, outside the exact 95% interval for n (or beyond ``tol``)."""
    flags = []
    for r in rows[(rows["attack"] == CLEAN) & rows["model"].isin(list(refs))].itertuples():
        why = _off_reference(r.top1, r.n, refs[r.model], tol)
        if why is not None:
            flags.append(flag("clean_accuracy_mismatch", str(r.model),
                              f"clean top-1 {r.top1:.3f} ({round(r.top1 * r.n)}/{r.n}), but the reference "
                              f"{refs[r.model]:g} is {why}"))
    return flags


def _off_reference(top1: float, n: int, ref: float, tol: float | None) -> str | None:
    """Why a reference does not fit the measured share, or None when it does."""
    if tol is not None:
        return f"more than {tol:g} away" if abs(top1 - ref) > tol else None
    low, high = exact_interval(round(top1 * n), n)
    return None if low <= ref <= high else f"outside its exact 95% interval [{low:.3f}, {high:.3f}]"


def eval_flags(rows: pd.DataFrame, outcomes: Mapping[str, Outcomes], suite: Suite,
               refs: Mapping[str, float] | None = None, tol: float | None = None) -> list[Flag]:
    """The result checks of a white-box run (1, 2, 8, 10 and, with references, 9); 11 is the caller's (its pairs)."""
    return [
        *accuracy_rises(rows, correctness(outcomes)),
        *iterative_weaker(outcomes, suite),
        *black_box_beats_white_box(outcomes, suite),
        *perturbation_exceeds_eps(rows),
        *(clean_accuracy_mismatch(rows, refs, tol) if refs else []),
    ]


def cheaper_suite_missed(model: str, eps: float, checked: int, fooled: int) -> list[Flag]:
    """A flag when the full AutoAttack fooled any of the ``checked`` survivors of a cheaper suite's worst row.

    One fooled sample is enough: each is a sample the suite counted as robust and is not, so its
    robust accuracy is overstated by at least that much, whatever the statistics say.
    """
    if not fooled:
        return []
    return [flag("cheaper_suite_missed", model, f"the full autoattack suite fooled {fooled} of {checked} samples "
                 "that survived this suite: its shortcuts missed them, so its robust accuracy is overstated; "
                 "report the autoattack suite's number instead", "worst", eps)]
