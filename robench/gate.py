"""CI gates: a results file (and a baseline) judged against rules read from gates.yaml.

Four kinds of rule, each checked on every row it matches:

- floor (``min:`` / ``max:``): the row's metric must lie within the bounds;
- regression (``max_drop:``): the drop ``baseline - results`` of an accuracy must not be
  *significantly* larger than ``max_drop``. A check fails only when the whole confidence
  interval of the drop lies above ``max_drop``. With per-sample outcomes in both files the
  interval is Bonett-Price's for paired proportions (robench.stats.paired); without them
  it is Agresti-Caffo's for two independent proportions. The intervals of one gate are
  simultaneous by Bonferroni, so a gate with no real regression fails with probability at
  most (1 - confidence) / 2 however many rows it checks; a flipped sample or two is noise;
- no_leak: the leak-check verdicts of the matched models must not be LEAK;
- health: the results' health findings fail the gate (``strict``) or are reported (``warn``).

A rule that matches nothing, a file without a compatible ``schema_version`` and a baseline
evaluated on other samples are bad input (RobenchError), never a pass.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from robench import samples
from robench.errors import CheckFailed, RobenchError
from robench.files import read_text
from robench.provenance import SCHEMA_VERSION
from robench.stats import paired
from robench.suite import locate, parse_eps, read_yaml

KEY_COLUMNS = ("model", "source", "target", "attack", "eps")
GLOB_KEYS = ("model", "source", "target", "attack")
PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
VERDICTS = ("LEAK", "OK", "INCONCLUSIVE")
CORRECTIONS = ("bonferroni", "none")
DEFAULT_MAX_DROP = 0.02
CHECK_COLUMNS = ["rule", "kind", "where", "row", "model", "attack", "eps", "metric", "value", "threshold",
                 "baseline", "drop", "drop_low", "drop_high", "test", "status", "detail"]


@dataclass(frozen=True)
class Match:
    """Which rows a rule applies to: fnmatch globs per key column, and eps values (None = all)."""

    globs: tuple[tuple[str, str], ...] = ()
    eps: tuple[float, ...] | None = None

    def row(self, row: dict[str, Any]) -> bool:
        """Does a result row carry every column the rule names, with matching values?"""
        if not all(col in row and fnmatchcase(str(row[col]), pat) for col, pat in self.globs):
            return False
        if self.eps is None:
            return True
        return row.get("eps") is not None and any(math.isclose(float(row["eps"]), e) for e in self.eps)

    def model(self, label: str) -> bool:
        """Does a model label fit the rule's ``model`` glob (for verdicts and health findings)?"""
        return all(fnmatchcase(str(label), pat) for col, pat in self.globs if col == "model")

    def describe(self) -> str:
        """"model=a*, eps 8" for messages."""
        parts = [f"{c}={p}" for c, p in self.globs]
        if self.eps is not None:
            parts.append("eps " + ",".join(f"{e:g}" for e in self.eps))
        return ", ".join(parts) or "every row"


@dataclass(frozen=True)
class Floor:
    """The metric of every matched row must be >= ``min`` and <= ``max`` (absolute bounds)."""

    where: str
    name: str
    match: Match
    metric: str = "top1"
    min: float | None = None
    max: float | None = None

    def threshold(self) -> str:
        """The bound(s) as text."""
        bounds = (f">= {self.min:g}" if self.min is not None else "",
                  f"<= {self.max:g}" if self.max is not None else "")
        return f"{self.metric} " + " and ".join(b for b in bounds if b)


@dataclass(frozen=True)
class Regression:
    """Against the baseline, the metric of every matched row must not drop significantly by more than ``max_drop``."""

    where: str
    name: str
    match: Match
    metric: str = "top1"
    max_drop: float = DEFAULT_MAX_DROP

    def threshold(self) -> str:
        """The limit as text."""
        return f"{self.metric} drop <= {self.max_drop:g}"


@dataclass(frozen=True)
class NoLeak:
    """No matched model may have the leak-check verdict LEAK (nor INCONCLUSIVE, unless allowed)."""

    where: str
    name: str
    match: Match
    allow_inconclusive: bool = True

    def threshold(self) -> str:
        """The accepted verdicts as text."""
        return "verdict OK or INCONCLUSIVE" if self.allow_inconclusive else "verdict OK"


@dataclass(frozen=True)
class Health:
    """The results' health findings fail the gate (``strict``) or are only reported (``warn``)."""

    where: str
    name: str
    match: Match
    mode: str = "strict"

    def threshold(self) -> str:
        """The mode as text."""
        return f"health {self.mode}"


Rule = Floor | Regression | NoLeak | Health
KINDS: dict[type, str] = {Floor: "floor", Regression: "regression", NoLeak: "no_leak", Health: "health"}


@dataclass(frozen=True)
class Rules:
    """A gate: its rules in order, and the confidence of its regression intervals."""

    rules: tuple[Rule, ...]
    confidence: float = 0.95
    correction: str = "bonferroni"  # or "none": each interval at ``confidence`` on its own
    source: str = "<default>"


def default_rules() -> Rules:
    """Without --rules: every row present in both files may drop top-1 by at most 0.02."""
    return Rules((Regression("default rule", "", Match(), "top1", DEFAULT_MAX_DROP),))


# --- gates.yaml -------------------------------------------------------------------------------------------

_TRIGGERS = {"min": Floor, "max": Floor, "max_drop": Regression, "no_leak": NoLeak, "health": Health}
_ROW_KEYS = ("name", "model", "source", "target", "attack", "eps", "metric")
_ALLOWED = {
    Floor: (*_ROW_KEYS, "min", "max"),
    Regression: (*_ROW_KEYS, "max_drop"),
    NoLeak: ("name", "model", "no_leak", "allow_inconclusive"),
    Health: ("name", "model", "health"),
}
_ALL_KEYS = tuple(dict.fromkeys(k for keys in _ALLOWED.values() for k in keys))
_TOP_KEYS = ("confidence", "correction", "rules")
_EXAMPLE = "{attack: fgsm, eps: 8, min: 0.4}"


def load_rules(path: str | Path) -> Rules:
    """Read and validate a gates.yaml file."""
    path = Path(path)
    return parse_rules(read_text(path, "gate rules"), str(path))


def parse_rules(text: str, source: str = "<string>") -> Rules:
    """Parse gate rules: a mapping with ``rules`` (and optional ``confidence``, ``correction``), or a bare list."""
    doc = read_yaml(text, source)
    if isinstance(doc, list):
        doc = {"rules": doc}
    if not isinstance(doc, dict):
        raise RobenchError(f"{source}: gate rules are a mapping with a 'rules' list, e.g. rules: [{_EXAMPLE}]")
    _no_unknown(doc, _TOP_KEYS, source, "at the top level")
    entries = doc.get("rules")
    if not isinstance(entries, list) or not entries:
        raise RobenchError(f"{locate(source, doc, 'rules')}: 'rules' must be a non-empty list, e.g. [{_EXAMPLE}]")
    confidence = _number(doc, "confidence", source, 0.95, 0.5, 0.9999, " (0.95 for 95%)")
    correction = doc.get("correction", "bonferroni")
    if correction not in CORRECTIONS:
        raise RobenchError(f"{locate(source, doc, 'correction')}: 'correction' must be bonferroni or none, "
                           f"got {correction!r}")
    return Rules(tuple(_rule(e, source) for e in entries), confidence, correction, source)


def _no_unknown(node: dict[str, Any], allowed: tuple[str, ...], source: str, what: str) -> None:
    for key in node:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = (f"; did you mean '{close[0]}'?" if close else
                    "; it belongs to another kind of rule (split the rule)" if key in _ALL_KEYS else "")
            raise RobenchError(f"{locate(source, node, key)}: unknown key '{key}' {what}{hint}; "
                               f"allowed: {', '.join(allowed)}")


def _number(node: dict[str, Any], key: str, source: str, default: float | None, low: float = 0.0,
            high: float = 1.0, hint: str = " (a share: 0.4 for 40%)") -> float | None:
    value = node.get(key, default)
    if value is None and key not in node:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RobenchError(f"{locate(source, node, key)}: '{key}' must be a number in [{low:g}, {high:g}]{hint}, "
                           f"got {value!r}")
    return float(value)


def _rule_kind(entry: dict[str, Any], where: str) -> type:
    kinds = list(dict.fromkeys(_TRIGGERS[k] for k in entry if k in _TRIGGERS))
    if len(kinds) != 1:
        found = f"it has {' and '.join(k for k in entry if k in _TRIGGERS)}" if kinds else "it has none"
        raise RobenchError(f"{where}: a rule needs exactly one of min/max, max_drop, no_leak or health ({found}); "
                           f"e.g. {_EXAMPLE}")
    return kinds[0]


def _match(entry: dict[str, Any], source: str) -> Match:
    globs = []
    for key in GLOB_KEYS:
        if key in entry:
            if not isinstance(entry[key], str) or not entry[key]:
                raise RobenchError(f"{locate(source, entry, key)}: '{key}' must be a name or glob such as "
                                   f"\"effnet-*\" (quote it), got {entry[key]!r}")
            globs.append((key, entry[key]))
    eps = None
    if "eps" in entry:
        values = entry["eps"] if isinstance(entry["eps"], list) else [entry["eps"]]
        where = locate(source, entry, "eps")
        if not values:
            raise RobenchError(f"{where}: 'eps' is empty; give a number (8) or a list ([4, 8]), or leave it out")
        eps = tuple(parse_eps(v, f"{where}: 'eps'") for v in values)
    return Match(tuple(globs), eps)


def _rule(entry: Any, source: str) -> Rule:
    if not isinstance(entry, dict):
        raise RobenchError(f"{source}: each rule is a mapping such as {_EXAMPLE}, got {entry!r}")
    where = locate(source, entry)
    _no_unknown(entry, _ALL_KEYS, source, "in a rule")
    kind = _rule_kind(entry, where)
    _no_unknown(entry, _ALLOWED[kind], source, f"for a {KINDS[kind]} rule")
    name = entry.get("name", "")
    if not isinstance(name, str):
        raise RobenchError(f"{locate(source, entry, 'name')}: 'name' must be text, got {name!r}")
    return _BUILDERS[kind](entry, source, where, name, _match(entry, source))


def _metric(entry: dict[str, Any], source: str) -> str:
    metric = entry.get("metric", "top1")
    if not isinstance(metric, str) or not metric:
        raise RobenchError(f"{locate(source, entry, 'metric')}: 'metric' must be a column name such as top1")
    return metric


def _floor(entry: dict[str, Any], source: str, where: str, name: str, match: Match) -> Floor:
    metric = _metric(entry, source)
    if metric.endswith(("top1", "top5", "_rate")):
        bounds = [_number(entry, k, source, None) for k in ("min", "max")]
    else:  # counts, gaps: any number
        bounds = [_number(entry, k, source, None, -math.inf, math.inf, "") for k in ("min", "max")]
    if None not in bounds and bounds[0] > bounds[1]:
        raise RobenchError(f"{where}: min {bounds[0]:g} is above max {bounds[1]:g}; no value can pass")
    return Floor(where, name, match, metric, *bounds)


def _regression(entry: dict[str, Any], source: str, where: str, name: str, match: Match) -> Regression:
    metric = _metric(entry, source)
    if not metric.endswith(("top1", "top5")):
        raise RobenchError(f"{locate(source, entry, 'metric')}: max_drop judges accuracies (top1, top5, "
                           f"target_top1, ...), not '{metric}'; use min/max for other metrics")
    return Regression(where, name, match, metric, _number(entry, "max_drop", source, None))


def _no_leak(entry: dict[str, Any], source: str, where: str, name: str, match: Match) -> NoLeak:
    if entry["no_leak"] is not True:
        raise RobenchError(f"{locate(source, entry, 'no_leak')}: write 'no_leak: true' (anything else checks "
                           f"nothing; remove the rule instead)")
    allow = entry.get("allow_inconclusive", True)
    if not isinstance(allow, bool):
        raise RobenchError(f"{locate(source, entry, 'allow_inconclusive')}: 'allow_inconclusive' must be "
                           f"true or false, got {allow!r}")
    return NoLeak(where, name, match, allow)


def _health(entry: dict[str, Any], source: str, where: str, name: str, match: Match) -> Health:
    if entry["health"] not in ("strict", "warn"):
        raise RobenchError(f"{locate(source, entry, 'health')}: 'health' must be strict or warn, "
                           f"got {entry['health']!r}")
    return Health(where, name, match, entry["health"])


_BUILDERS = {Floor: _floor, Regression: _regression, NoLeak: _no_leak, Health: _health}


# --- results files ----------------------------------------------------------------------------------------

def load_results(path: str | Path, role: str = "results") -> dict[str, Any]:
    """A results file as a validated document: .json as written by --out, or .csv beside its .meta.json."""
    path = Path(path)
    doc = _load_csv(path, role) if path.suffix.lower() == ".csv" else _read_json(path, role)
    validate(doc, str(path))
    return doc


def _read_json(path: Path, role: str) -> Any:
    text = read_text(path, role)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RobenchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                           f"give a file written by 'robench eval --out FILE.json'") from None


def _load_csv(path: Path, role: str) -> dict[str, Any]:
    from robench.report import records

    side = path.with_name(path.name + ".meta.json")
    if not path.is_file():
        raise RobenchError(f"{role} file not found: {path}")
    if not side.is_file():
        raise RobenchError(f"{path}: its provenance file {side} is missing (--out FILE.csv writes both)")
    meta = _read_json(side, role)
    try:
        rows = records(pd.read_csv(path))
    except (ValueError, OSError) as e:
        raise RobenchError(f"cannot read {role} file {path} as CSV: {e}") from None
    return {**meta, "rows": rows} if isinstance(meta, dict) else meta


def validate(doc: Any, name: str) -> None:
    """Refuse anything but a robench results document of this robench's schema version."""
    if not isinstance(doc, dict):
        raise RobenchError(f"{name}: not a robench results file (a JSON object with 'schema_version' and 'rows')")
    version = doc.get("schema_version")
    if version is None:
        raise RobenchError(f"{name}: no 'schema_version'; not a robench results file, or one older than schema "
                           f"versions; re-run the evaluation with --out FILE.json")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise RobenchError(f"{name}: schema_version {version!r}, but this robench reads schema_version "
                           f"{SCHEMA_VERSION}; re-run the evaluation with this robench (for a baseline: "
                           f"robench baseline update NEW.json {name})")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise RobenchError(f"{name}: 'rows' must be a non-empty list of result rows")


def row_key(row: dict[str, Any]) -> tuple:
    """A row's identity: its key columns present, in KEY_COLUMNS order (as in the samples records)."""
    return tuple(row[c] for c in KEY_COLUMNS if c in row)


def row_label(row: dict[str, Any]) -> str:
    """"effnet-base fgsm eps 8" (or "a -> b fgsm eps 8" for transfer rows) for reports."""
    parts = [str(row["model"])] if "model" in row else []
    if "source" in row and "target" in row:
        parts.append(f"{row['source']} -> {row['target']}")
    if "attack" in row:
        parts.append(str(row["attack"]))
    if row.get("eps") is not None and row.get("attack") != "clean":
        parts.append(f"eps {float(row['eps']):g}")
    return " ".join(parts)


# --- running a gate ---------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Docs:
    """The two documents of a gate, with their per-sample outcomes read once per metric."""

    results: dict[str, Any]
    baseline: dict[str, Any] | None
    names: tuple[str, str]
    _bits: dict[tuple[int, str], dict[tuple, np.ndarray]] = field(default_factory=dict)

    def bits(self, which: int, metric: str) -> dict[tuple, np.ndarray]:
        """{row key: per-sample correctness} of the results (0) or baseline (1); empty when absent."""
        doc = (self.results, self.baseline)[which]
        if (which, metric) not in self._bits:
            has_ids = isinstance(doc.get("dataset"), dict) and "ids" in doc["dataset"]
            self._bits[(which, metric)] = samples.read(doc, f"{metric}_correct") if has_ids else {}
        return self._bits[(which, metric)]


@dataclass(frozen=True, eq=False)
class GateReport:
    """Every check of a gate as a tidy DataFrame (one row per rule x matched row), and how it was judged."""

    checks: pd.DataFrame
    confidence: float  # the family's: every regression interval holds at once with this confidence
    check_confidence: float  # each regression interval's own confidence (Bonferroni-adjusted)
    correction: str
    comparisons: int  # regression checks that compared a row with its baseline

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


def check_line(check: Any) -> str:
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
    checks = [check for i, (rule, m) in enumerate(zip(rules.rules, matched, strict=True), 1)
              for check in _checks(rule, _rule_label(i, rule), m, docs, each)]
    return GateReport(pd.DataFrame(checks, columns=CHECK_COLUMNS), rules.confidence, each, rules.correction,
                      comparisons)


def _rule_label(index: int, rule: Rule) -> str:
    return f"rule {index}" + (f" ({rule.name})" if rule.name else "")


def _matched(rule: Rule, docs: _Docs) -> list[Any]:
    """What a rule checks: rows (floor), (results row, baseline row) pairs, verdicts or health findings."""
    if isinstance(rule, Floor):
        found = [r for r in docs.results["rows"] if rule.match.row(r)]
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


def _pairs(rule: Regression, docs: _Docs) -> list[tuple[dict | None, dict | None]]:
    """(results row, baseline row) for every matched key of either file; None where a file lacks it."""
    if docs.baseline is None:
        raise RobenchError(f"{rule.where}: max_drop compares with a baseline; give --baseline BASELINE.json")
    _same_samples(docs)
    new = {row_key(r): r for r in docs.results["rows"] if rule.match.row(r)}
    old = {row_key(r): r for r in docs.baseline["rows"] if rule.match.row(r)}
    if new and old and not set(new) & set(old):
        raise RobenchError(f"{rule.where}: no row the rule matches is in both {docs.names[0]} and {docs.names[1]} "
                           f"({len(new)} and {len(old)} rows, none alike); compare runs of the same models and attacks")
    if not set(new) & set(old):
        return []
    return [(new.get(k), old.get(k)) for k in dict.fromkeys([*new, *old])]


def _same_samples(docs: _Docs) -> None:
    """Compare only results evaluated on the same samples (the same ids, in the same order)."""
    a, b = (d.get("dataset", {}).get("ids_sha256") if isinstance(d.get("dataset"), dict) else None
            for d in (docs.results, docs.baseline))
    if a is None or b is None or a != b:
        shown = " vs ".join(str(h)[:12] if h else "none" for h in (a, b))
        new = docs.names[0] if docs.names[0].endswith((".json", ".csv")) else "RESULTS.json"
        raise RobenchError(f"{docs.names[0]} and {docs.names[1]} were evaluated on different samples (dataset ids "
                           f"sha256 {shown}); evaluate with the baseline's --data, --limit and --seed, or replace "
                           f"the baseline on purpose: robench baseline update {new} {docs.names[1]}")


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
        raise RobenchError(f"{where}: metric '{metric}' is not a column of {name} ({columns})")
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


def _regression_check(rule: Regression, pair: tuple[dict | None, dict | None], docs: _Docs,
                      confidence: float) -> dict[str, Any]:
    new, old = pair
    if new is None:
        return {**_row_fields(old), "status": FAIL, "detail": f"row is in {docs.names[1]} but missing from "
                f"{docs.names[0]}; evaluate it, or drop it from the baseline on purpose (robench baseline update)"}
    if old is None:
        return {**_row_fields(new), "status": SKIP, "detail": "no baseline row (new); not compared"}
    value = _metric_value(new, rule.metric, rule.where, docs.names[0])
    before = _metric_value(old, rule.metric, rule.where, docs.names[1])
    if value is None or before is None:
        return {**_row_fields(new), "status": SKIP, "detail": f"{rule.metric} is empty; not compared"}
    drop, low, high, test, counts = _drop(rule.metric, new, old, docs, confidence)
    status = FAIL if low > rule.max_drop else WARN if drop > rule.max_drop else PASS
    verdict = {FAIL: f"significantly above {rule.max_drop:g}", WARN: f"above {rule.max_drop:g}, not significantly",
               PASS: f"within {rule.max_drop:g}"}[status]
    return {**_row_fields(new), "value": value, "baseline": before, "drop": drop, "drop_low": low, "drop_high": high,
            "test": test, "status": status, "detail": f"drop {verdict} ({test}: {counts})"}


def _drop(metric: str, new: dict[str, Any], old: dict[str, Any], docs: _Docs,
          confidence: float) -> tuple[float, float, float, str, str]:
    """(drop, interval low, interval high, test name, counts) for one row and its baseline."""
    key = row_key(new)
    after, before = docs.bits(0, metric).get(key), docs.bits(1, metric).get(key)
    if after is not None and before is not None:
        _consistent(new, after, metric, docs.names[0])
        _consistent(old, before, metric, docs.names[1])
        d = paired(before, after, confidence)
        return 0.0 - d.diff, 0.0 - d.high, 0.0 - d.low, "paired", f"{d.lost} lost, {d.gained} gained of {d.n}"
    (x_old, n_old), (x_new, n_new) = _counts(old, metric, docs.names[1]), _counts(new, metric, docs.names[0])
    low, high = independent_interval(x_old, n_old, x_new, n_new, confidence)
    return x_old / n_old - x_new / n_new, low, high, "independent", f"{x_old}/{n_old} then {x_new}/{n_new}"


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
    is the unpaired counterpart of the Bonett-Price interval in robench.stats.
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
            raise RobenchError("nothing to gate: give --rules gates.yaml, --baseline BASELINE.json, or both")
        rules = default_rules()
    report = run_gate(results, baseline, rules, names)
    report.raise_for_failures()
    return report
