"""CI gates: a results document (and a baseline) judged against gate rules (robench.gate.rules).

Every rule is checked on every row it matches:

- floor: the row's metric must lie within the bounds;
- regression: the drop ``baseline - results`` of an accuracy must not be *significantly*
  larger than ``max_drop``. A check fails only when the whole confidence interval of the
  drop lies above ``max_drop``. With per-sample outcomes in both files the interval is
  Bonett-Price's for paired proportions (robench.core.stats.paired); without them it is
  Agresti-Caffo's for two independent proportions. The intervals of one gate are
  simultaneous by Bonferroni, so a gate with no real regression fails with probability at
  most (1 - confidence) / 2 however many rows it checks; a flipped sample or two is noise;
- no_leak: the leak-check verdicts of the matched models must not be LEAK;
- health: the results' health findings fail the gate (``strict``) or are reported (``warn``).

A rule that matches nothing or judges nothing (every check skipped), a document without a
compatible ``schema_version``, a baseline evaluated on other samples and compared rows run with
other attack settings (robench.gate.settings) are bad input (RobenchError), never a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from robench.core.stats import interval, paired
from robench.errors import CheckFailed, FieldError, RobenchError
from robench.gate.rules import KINDS, Floor, Health, NoLeak, Regression, Rule, Rules, default_rules
from robench.gate.settings import check_settings
from robench.results.read import KEY_COLUMNS, per_sample, row_key, row_label, validate

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
VERDICTS = ("LEAK", "OK", "INCONCLUSIVE")
CHECK_COLUMNS = ["rule", "kind", "where", "row", "model", "attack", "eps", "metric", "value", "threshold",
                 "baseline", "drop", "drop_low", "drop_high", "test", "status", "detail"]


@dataclass(eq=False)
class _Docs:
    """The two documents of a gate, with their per-sample outcomes read once per metric."""

    results: dict[str, Any]
    baseline: dict[str, Any] | None
    names: tuple[str, str]
    _bits: dict[tuple[int, str], dict[tuple, np.ndarray]] = field(default_factory=dict)

    def bits(self, which: int, metric: str) -> dict[tuple, np.ndarray]:
        """{row key: per-sample correctness} of the results (0) or baseline (1); empty when absent."""
        if (which, metric) not in self._bits:
            doc = (self.results, self.baseline)[which]
            self._bits[(which, metric)] = {} if doc is None else per_sample(doc, metric)
        return self._bits[(which, metric)]


@dataclass(frozen=True, eq=False)
class GateReport:
    """Every check of a gate as a tidy DataFrame (one row per rule x matched row), and how it was judged."""

    checks: pd.DataFrame
    confidence: float  # the family's: every regression interval holds at once with this confidence
    check_confidence: float  # each regression interval's own confidence (Bonferroni-adjusted)
    correction: str
    comparisons: int  # regression checks that compared a row with its baseline
    warnings: tuple[str, ...] = ()  # one line each, for stderr: regression rules no drop could fail

    @property
    def passed(self) -> bool:
        """True when no check failed (warnings and skips do not fail a gate)."""
        return not (self.checks["status"] == FAIL).any()

    def counts(self) -> dict[str, int]:
        """Number of checks per status, in the order pass, warn, fail, skip."""
        return {s: int((self.checks["status"] == s).sum()) for s in (PASS, WARN, FAIL, SKIP)}

    def statistics(self) -> str:
        """One paragraph saying how regression checks were judged (for reports)."""
        if not self.comparisons:
            return "No regression check compared a row with a baseline."
        family = (f"; the {self.comparisons} intervals hold simultaneously with {self.confidence:.0%} confidence "
                  f"(Bonferroni)" if self.correction == "bonferroni" and self.comparisons > 1 else "")
        return (f"drop = baseline - results. A regression check fails only when the whole "
                f"{_pct(self.check_confidence)} confidence interval of the drop lies above max_drop (paired: "
                f"Bonett-Price on per-sample outcomes; independent: Agresti-Caffo on the two accuracies){family}.")

    def raise_for_failures(self) -> None:
        """Raise CheckFailed (exit code 1) naming the first failed check when any failed."""
        failed = self.checks[self.checks["status"] == FAIL]
        if failed.empty:
            return
        raise CheckFailed(f"gate failed: {len(failed)} of {len(self.checks)} checks failed; first: "
                          f"{check_line(failed.iloc[0])}")


def check_line(check: pd.Series) -> str:
    """One check as one line: rule, row, value and verdict."""
    row = f" {check['row']}" if check["row"] else ""
    if isinstance(check["drop"], float) and not math.isnan(check["drop"]):
        what = (f"{check['metric']} {check['baseline']:.4f} -> {check['value']:.4f}, drop {check['drop']:+.4f} "
                f"[{check['drop_low']:+.4f}, {check['drop_high']:+.4f}]: ")
    else:
        what = ""
    return f"{check['rule']}{row}: {what}{check['detail']}"


def _pct(confidence: float) -> str:
    return f"{100 * confidence:.4g}%"


def run_gate(results: dict[str, Any], baseline: dict[str, Any] | None, rules: Rules,
             names: tuple[str, str] = ("results", "baseline")) -> GateReport:
    """Check every rule against the results (and the baseline); bad input raises RobenchError.

    ``names`` name the two documents in messages (usually their paths).
    """
    validate(results, names[0])
    if baseline is not None:
        validate(baseline, names[1])
    docs = _Docs(results, baseline, names)
    matched = [_matched(rule, docs) for rule in rules.rules]
    comparisons = sum(1 for rule, found in zip(rules.rules, matched, strict=True) if isinstance(rule, Regression)
                      for new, old in found if new is not None and old is not None)
    each = rules.confidence
    if rules.correction == "bonferroni" and comparisons > 1:
        each = 1 - (1 - rules.confidence) / comparisons
    checks: list[dict[str, Any]] = []
    warnings: list[str] = []
    for i, (rule, m) in enumerate(zip(rules.rules, matched, strict=True), 1):
        found = _checks(rule, _rule_label(i, rule), m, docs, each)
        _refuse_ungraded(rule, found)
        warnings += _blind(rule, _rule_label(i, rule), found, each)
        checks += found
    return GateReport(pd.DataFrame(checks, columns=CHECK_COLUMNS), rules.confidence, each, rules.correction,
                      comparisons, tuple(warnings))


def _refuse_ungraded(rule: Rule, found: list[dict[str, Any]]) -> None:
    """Raise RobenchError when every check of a rule was skipped: a rule that judges nothing is no pass.

    The same failure as a rule that matches nothing, one step later (a floor on success_rate
    over clean rows, whose success_rate is empty).
    """
    if found and all(c["status"] == SKIP for c in found):
        first = found[0]
        raise RobenchError(f"{rule.where}: the rule ({rule.match.describe()}) judges nothing: all {len(found)} of "
                           f"its checks were skipped (first, {first.get('row') or 'a row'}: {first['detail']}); point "
                           f"its selectors or metric at rows it can judge, or remove it")


def _blind(rule: Rule, label: str, found: list[dict[str, Any]], confidence: float) -> list[str]:
    """One warning for a regression rule whose rows are too few for any drop to fail it (n = 1: [-1, 1])."""
    blind = [c["blind"] for c in found if "blind" in c]
    if not isinstance(rule, Regression) or not blind:
        return []
    n, low, test = min(blind)
    need = samples_needed(rule.max_drop, confidence, test)
    more = f"at least {need} samples per row are needed" if need else "no sample size is enough"
    return [f"{rule.where} ({label}): {len(blind)} of its rows compare only n = {n} samples, too few for any drop "
            f"to fail it: even losing every sample, the {_pct(confidence)} interval of the drop starts at {low:+.3f}, "
            f"not above max_drop {rule.max_drop:g} ({test}); {more}: evaluate more samples"]


def worst_low(n_old: int, n_new: int, confidence: float, test: str) -> float:
    """The low end of the drop's interval were every sample lost (all right in the baseline, all wrong now)."""
    if test == "paired":
        return -interval(0, n_old, n_old, confidence)[1]
    return independent_interval(n_old, n_old, 0, n_new, confidence)[0]


def samples_needed(max_drop: float, confidence: float, test: str, cap: int = 1 << 24) -> int | None:
    """The fewest samples per row at which losing them all fails a max_drop check; None if no number does."""
    high = 1
    while worst_low(high, high, confidence, test) <= max_drop:
        if high >= cap:
            return None
        high *= 2
    low = high // 2  # fails at ``high``, not at ``low`` (or low = 0)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if worst_low(mid, mid, confidence, test) > max_drop else (mid, high)
    return high


def check_planned(rules: Rules, rows: list[dict[str, Any]], name: str) -> None:
    """Raise RobenchError, before any evaluation, for a floor or regression rule that no planned row can match.

    ``rows`` are the (model, attack, eps) rows a run will write (metrics not known yet); a rule
    that matches none of them would fail only after the whole run.
    """
    planned = {"rows": rows}
    for rule in rules.rules:
        if isinstance(rule, (Floor, Regression)) and not any(rule.match.row(r) for r in rows):
            raise RobenchError(f"{rule.where}: the rule ({rule.match.describe()}) matches nothing {name} will write "
                               f"({_inventory(planned)}); fix its selectors or remove it")


def check_planned_baseline(rules: Rules, rows: list[dict[str, Any]], baseline: dict[str, Any],
                           names: tuple[str, str], config: dict[str, Any] | None = None) -> None:
    """Raise RobenchError, before any evaluation, for a max_drop rule with no planned row in the baseline too,
    or whose rows the baseline ran with other attack settings than ``config`` (the run's, as results record it).

    The checks ``run_gate`` makes on the finished results, made on the rows a run will write.
    """
    for rule in rules.rules:
        if isinstance(rule, Regression):
            new = {row_key(r): r for r in rows if rule.match.row(r)}
            old = {row_key(r) for r in baseline["rows"] if rule.match.row(r)}
            if config is not None:
                check_settings([str(new[k]["attack"]) for k in new if k in old], {"config": config}, baseline, names)
            if new and old and not set(new) & old:
                raise RobenchError(f"{rule.where}: no row the rule matches is in both {names[0]} and {names[1]} "
                                   f"({len(new)} and {len(old)} rows, none alike); compare runs of the same models "
                                   "and attacks")


def check_samples(rules: Rules, baseline: dict[str, Any] | None, dataset: dict[str, Any],
                  names: tuple[str, str]) -> None:
    """Raise RobenchError when max_drop would compare runs on other samples; ``dataset`` as results record it.

    A run calls it as soon as its data opens (``run_eval``'s ``on_open``), before any attack.
    """
    if baseline is not None and any(isinstance(rule, Regression) for rule in rules.rules):
        _same_samples({"dataset": dataset}, baseline, names)


def _rule_label(index: int, rule: Rule) -> str:
    return f"rule {index}" + (f" ({rule.name})" if rule.name else "")


def _matched(rule: Rule, docs: _Docs) -> list[Any]:
    """What a rule checks: rows (floor), (results row, baseline row) pairs, verdicts or health findings."""
    if isinstance(rule, Floor):
        found = [r for r in docs.results["rows"] if rule.match.row(r) and not _white_box_rate(rule.metric, r)]
    elif isinstance(rule, Regression):
        found = _pairs(rule, docs)
    elif isinstance(rule, NoLeak):
        found = _verdicts(rule, docs)
    else:
        return _findings(rule, docs)
    if not found:
        raise RobenchError(f"{rule.where}: the rule ({rule.match.describe()}) matches nothing in {docs.names[0]}"
                           f" ({_inventory(docs.results)}); fix its selectors or remove it")
    return found


def _white_box_rate(metric: str, row: dict[str, Any]) -> bool:
    """A transfer rate on the diagonal: a source scoring its own examples, 1.0 by definition, never a transfer."""
    return metric.startswith("transfer_rate") and "source" in row and row.get("source") == row.get("target")


def _inventory(doc: dict[str, Any]) -> str:
    """"models a, b; attacks clean, fgsm; eps 0, 8" for messages."""
    rows = doc["rows"]
    if isinstance(doc.get("verdicts"), dict) and not any("model" in r for r in rows):
        return "verdicts for " + ", ".join(doc["verdicts"])
    parts = []
    for col in KEY_COLUMNS:
        values = list(dict.fromkeys(r[col] for r in rows if col in r))
        if values:
            text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
            parts.append(f"{col} {text}")
    return "; ".join(parts)


_RowPair = tuple[dict, dict | None] | tuple[None, dict]  # (results row, baseline row): at least one of them


def _pairs(rule: Regression, docs: _Docs) -> list[_RowPair]:
    """(results row, baseline row) for every matched key of either file; None where a file lacks it."""
    if docs.baseline is None:
        raise FieldError("baseline", f"{rule.where}: max_drop compares with a baseline; give {{name}} BASELINE.json")
    _same_samples(docs.results, docs.baseline, docs.names)
    new = {row_key(r): r for r in docs.results["rows"] if rule.match.row(r)}
    old = {row_key(r): r for r in docs.baseline["rows"] if rule.match.row(r)}
    if new and old and not set(new) & set(old):
        raise RobenchError(f"{rule.where}: no row the rule matches is in both {docs.names[0]} and {docs.names[1]} "
                           f"({len(new)} and {len(old)} rows, none alike); compare runs of the same models and attacks")
    if not set(new) & set(old):
        return []
    compared = [str(new[k]["attack"]) for k in new if k in old and "attack" in new[k]]
    check_settings(compared, docs.results, docs.baseline, docs.names)
    return [(new[k], old.get(k)) if k in new else (None, old[k]) for k in dict.fromkeys([*new, *old])]


def _same_samples(results: dict[str, Any], baseline: dict[str, Any], names: tuple[str, str]) -> None:
    """Compare only results evaluated on the same samples (the same ids, in the same order, and the same images).

    The content hashes (``dataset.content_sha256``) are compared when both files have them: two
    folders of the same file names (val and a re-encoded val) share their ids. Older files,
    without them, are compared on ids alone.
    """
    a, b = (_dataset_field(d, "ids_sha256") for d in (results, baseline))
    new = names[0] if names[0].endswith((".json", ".csv")) else "RESULTS.json"
    if a is None or b is None or a != b:
        shown = " vs ".join(str(h)[:12] if h else "none" for h in (a, b))
        raise FieldError("data", f"{names[0]} and {names[1]} were evaluated on different samples (dataset "
                                 f"ids sha256 {shown}); evaluate with the baseline's {{name}}, {{limit}} and {{seed}}, "
                                 f"or replace the baseline on purpose: robench baseline update {new} {names[1]}",
                         "limit", "seed")
    a, b = (_dataset_field(d, "content_sha256") for d in (results, baseline))
    if a and b and a != b:
        raise RobenchError(f"{names[0]} and {names[1]} were evaluated on the same sample ids but other "
                           f"images (dataset content sha256 {a[:12]} vs {b[:12]}), so no sample can be compared with "
                           f"itself; evaluate on the baseline's data, or replace the baseline on purpose: "
                           f"robench baseline update {new} {names[1]}")


def _dataset_field(doc: dict, name: str) -> str | None:
    """A string field of a results file's dataset record, or None."""
    dataset = doc.get("dataset")
    value = dataset.get(name) if isinstance(dataset, dict) else None
    return value if isinstance(value, str) else None


def _verdicts(rule: NoLeak, docs: _Docs) -> list[tuple[str, str]]:
    verdicts = docs.results.get("verdicts")
    if not isinstance(verdicts, dict):
        raise RobenchError(f"{rule.where}: no_leak needs a leak-check results file (with 'verdicts'); "
                           f"{docs.names[0]} comes from '{docs.results.get('command')}'")
    found = [(str(m), v) for m, v in verdicts.items() if rule.match.model(m)]
    bad = next((v for _, v in found if v not in VERDICTS), None)
    if bad is not None:
        raise RobenchError(f"{docs.names[0]}: unknown leak verdict {bad!r}; expected one of {', '.join(VERDICTS)}")
    return found


def _findings(rule: Health, docs: _Docs) -> list[Any]:
    """The health findings the rule covers; [None] when the file has no health section (not checked)."""
    section = docs.results.get("health")
    if section is None:
        return [None]
    if not isinstance(section, list) or not all(isinstance(f, dict) for f in section):
        raise RobenchError(f"{docs.names[0]}: 'health' must be a list of findings; the file is damaged")
    return [f for f in section if rule.match.model(f.get("model", ""))]


def _checks(rule: Rule, label: str, matched: list[Any], docs: _Docs, confidence: float) -> list[dict[str, Any]]:
    if isinstance(rule, Floor):
        found = [_floor_check(rule, row, docs) for row in matched]
    elif isinstance(rule, Regression):
        found = [_regression_check(rule, pair, docs, confidence) for pair in matched]
    elif isinstance(rule, NoLeak):
        found = [_leak_check(rule, model, verdict) for model, verdict in matched]
    else:
        found = [_health_check(rule, f) for f in matched] or [{"status": PASS, "detail": "no health findings"}]
    base = {"rule": label, "kind": KINDS[type(rule)], "where": rule.where, "threshold": rule.threshold()}
    return [{**base, "metric": getattr(rule, "metric", None), **check} for check in found]


def _row_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {"row": row_label(row), "model": row.get("model"), "attack": row.get("attack"), "eps": row.get("eps")}


def _metric_value(row: dict[str, Any], metric: str, where: str, name: str) -> float | None:
    if metric not in row:
        columns = ", ".join(c for c in row if c not in KEY_COLUMNS)
        fix = "; give rules naming one of those columns (metric: target_top1 for a transfer matrix)" \
            if where == "default rule" else ""
        raise RobenchError(f"{where}: metric '{metric}' is not a column of {name} ({columns}){fix}")
    value = row[metric]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)):
        raise RobenchError(f"{name}: row {row_label(row)} has a non-numeric {metric} {value!r}; the file is damaged")
    return value


def _floor_check(rule: Floor, row: dict[str, Any], docs: _Docs) -> dict[str, Any]:
    value = _metric_value(row, rule.metric, rule.where, docs.names[0])
    if value is None:
        return {**_row_fields(row), "status": SKIP, "detail": f"{rule.metric} is empty for this row"}
    if rule.min is not None and value < rule.min:
        status, detail = FAIL, f"{rule.metric} {value:.4f} is below the floor {rule.min:g}"
    elif rule.max is not None and value > rule.max:
        status, detail = FAIL, f"{rule.metric} {value:.4f} is above the ceiling {rule.max:g}"
    else:
        status, detail = PASS, f"{rule.metric} {value:.4f} meets {rule.threshold().split(' ', 1)[1]}"
    return {**_row_fields(row), "value": value, "status": status, "detail": detail}


def _leak_check(rule: NoLeak, model: str, verdict: str) -> dict[str, Any]:
    status = FAIL if verdict == "LEAK" else PASS if verdict == "OK" else WARN if rule.allow_inconclusive else FAIL
    detail = {"LEAK": "leak-check found label leaking", "OK": "no label leaking",
              "INCONCLUSIVE": "leak-check could not decide (too few samples?)"}[verdict]
    return {"row": model, "model": model, "value": verdict, "status": status, "detail": detail}


def _health_check(rule: Health, finding: dict[str, Any] | None) -> dict[str, Any]:
    status = FAIL if rule.mode == "strict" else WARN
    if finding is None:
        return {"row": "", "status": status, "detail": "not checked: the results file has no health section"}
    row = {k: finding.get(k) for k in ("model", "attack", "eps") if finding.get(k) is not None}
    docs_link = f" (see {finding['docs']})" if finding.get("docs") else ""
    return {**_row_fields(row), "value": finding.get("check"), "status": status,
            "detail": f"{finding.get('check')}: {finding.get('message')}{docs_link}"}


def _regression_check(rule: Regression, pair: _RowPair, docs: _Docs, confidence: float) -> dict[str, Any]:
    if pair[0] is None:
        return {**_row_fields(pair[1]), "status": FAIL, "detail": f"row is in {docs.names[1]} but missing from "
                f"{docs.names[0]}; evaluate it, or drop it from the baseline on purpose (robench baseline update)"}
    new, old = pair
    if old is None:
        return {**_row_fields(new), "status": SKIP, "detail": "no baseline row (new); not compared"}
    value = _metric_value(new, rule.metric, rule.where, docs.names[0])
    before = _metric_value(old, rule.metric, rule.where, docs.names[1])
    if value is None or before is None:
        return {**_row_fields(new), "status": SKIP, "detail": f"{rule.metric} is empty; not compared"}
    drop, low, high, test, counts, (n_old, n_new) = _drop(rule.metric, new, old, docs, confidence)
    status = FAIL if low > rule.max_drop else WARN if drop > rule.max_drop else PASS
    worst = worst_low(n_old, n_new, confidence, test)
    blind = {"blind": (min(n_old, n_new), worst, test)} if worst <= rule.max_drop else {}
    verdict = {FAIL: f"significantly above {rule.max_drop:g}", WARN: f"above {rule.max_drop:g}, not significantly",
               PASS: f"within {rule.max_drop:g}"}[status]
    return {**_row_fields(new), "value": value, "baseline": before, "drop": drop, "drop_low": low, "drop_high": high,
            "test": test, "status": status, "detail": f"drop {verdict} ({test}: {counts})", **blind}


def _drop(metric: str, new: dict[str, Any], old: dict[str, Any], docs: _Docs,
          confidence: float) -> tuple[float, float, float, str, str, tuple[int, int]]:
    """(drop, interval low, interval high, test name, counts, (n baseline, n results)) for one row and its baseline."""
    key = row_key(new)
    after, before = docs.bits(0, metric).get(key), docs.bits(1, metric).get(key)
    if after is not None and before is not None:
        _consistent(new, after, metric, docs.names[0])
        _consistent(old, before, metric, docs.names[1])
        d = paired(before, after, confidence)
        counts = f"{d.lost} lost, {d.gained} gained of {d.n}"
        return 0.0 - d.diff, 0.0 - d.high, 0.0 - d.low, "paired", counts, (d.n, d.n)
    (x_old, n_old), (x_new, n_new) = _counts(old, metric, docs.names[1]), _counts(new, metric, docs.names[0])
    low, high = independent_interval(x_old, n_old, x_new, n_new, confidence)
    return (x_old / n_old - x_new / n_new, low, high, "independent", f"{x_old}/{n_old} then {x_new}/{n_new}",
            (n_old, n_new))


def _consistent(row: dict[str, Any], bits: np.ndarray, metric: str, name: str) -> None:
    if abs(float(bits.mean()) - row[metric]) > 0.5 / len(bits):
        raise RobenchError(f"{name}: row {row_label(row)} says {metric} {row[metric]:.4f} but its per-sample outcomes "
                           f"give {bits.mean():.4f}; the file was edited or damaged; regenerate it")


def _counts(row: dict[str, Any], metric: str, name: str) -> tuple[int, int]:
    n = row.get("n")
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 1:
        raise RobenchError(f"{name}: row {row_label(row)} has no sample count 'n'; it cannot be compared")
    return round(row[metric] * n), int(n)


def independent_interval(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Agresti-Caffo interval for p1 - p2 from two independent samples (x successes of n), clipped to [-1, 1].

    Adding one success and one failure to each sample keeps the coverage near nominal for
    small samples and for accuracies near 0 or 1, where the plain Wald interval fails; it
    is the unpaired counterpart of the Bonett-Price interval in robench.core.stats.
    """
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p1, p2 = (x1 + 1) / (n1 + 2), (x2 + 1) / (n2 + 2)
    half = z * math.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2))
    return max(p1 - p2 - half, -1.0), min(p1 - p2 + half, 1.0)


def gate(results: dict[str, Any], baseline: dict[str, Any] | None, rules: Rules | None = None,
         names: tuple[str, str] = ("results", "baseline")) -> GateReport:
    """run_gate with the default rules when none are given; raises CheckFailed (exit 1) when a check fails."""
    if rules is None:
        if baseline is None:
            raise FieldError("rules", "nothing to gate: give {name} gates.yaml, {baseline} BASELINE.json, or both",
                             "baseline")
        rules = default_rules()
    report = run_gate(results, baseline, rules, names)
    report.raise_for_failures()
    return report
