"""Gate rules: gates.yaml parsed into frozen rule records, every mistake named by file, line and key.

Four kinds of rule, each checked (by robench.gate.judge) on every row it matches:

- floor (``min:`` / ``max:``): the row's metric must lie within the bounds;
- regression (``max_drop:``): against a baseline, an accuracy must not drop significantly by more than
  ``max_drop`` (robench.gate.judge says how "significantly" is judged);
- no_leak: the leak-check verdicts of the matched models must not be LEAK;
- health: the results' health findings fail the gate (``strict``) or are reported (``warn``).

A rule file is typed by people: a typo is an error naming its line and the closest key, never a
rule that silently checks nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from robench.attacks.suite import NORMS, parse_eps, unique_eps
from robench.core import fields
from robench.core.eps import l2_eps_list
from robench.core.files import read_text
from robench.core.yaml_read import check_node, locate, read_yaml
from robench.errors import RobenchError

GLOB_KEYS = ("model", "source", "target", "attack")
CORRECTIONS = ("bonferroni", "none")
HEALTH_MODES = ("strict", "warn")
NORM = fields.Rule(str, "linf or l2", choices=NORMS, must="be linf or l2")
DEFAULT_MAX_DROP = 0.02
ACCURACIES = ("top1", "top5", "_rate")  # metric endings whose bounds are shares; other metrics take any number


def _number(low: float, high: float, hint: str = "") -> fields.Rule:
    """A number in [low, high] (YAML's .nan and .inf are refused when the file is read), ``hint`` after the range."""
    says = f"a number in [{low:g}, {high:g}]{hint}"
    return fields.Rule(float, says, low=low, high=high, must=f"be {says}")


def _glob(text: str) -> str | None:
    return None if text else 'be a name or glob such as "effnet-*" (quote it)'


def _column(text: str) -> str | None:
    return None if text else "be a column name such as top1"


# What each key of gates.yaml accepts (robench.core.fields); the rule records check their fields with the same rules.
SHARE = _number(0, 1, " (a share: 0.4 for 40%)")
ANY_NUMBER = _number(-math.inf, math.inf)
TOP_FIELDS = {"confidence": _number(0.5, 0.9999, " (0.95 for 95%)"),
              "correction": fields.Rule(str, "bonferroni or none", choices=CORRECTIONS, must="be bonferroni or none")}
GLOB = fields.Rule(str, 'a name or glob such as "effnet-*" (quote it)', test=_glob)
ROW_FIELDS = {"name": fields.Rule(str, "text"), **{key: GLOB for key in GLOB_KEYS},
              "metric": fields.Rule(str, "a column name such as top1", test=_column), "norm": NORM}
BOUNDS = {"min": SHARE, "max": SHARE}
ANY_BOUNDS = {"min": ANY_NUMBER, "max": ANY_NUMBER}
DROP = {"max_drop": SHARE}
LEAK = {"allow_inconclusive": fields.Rule(bool, "true or false")}
HEALTH = {"health": fields.Rule(str, "strict or warn", choices=HEALTH_MODES, must="be strict or warn")}


@dataclass(frozen=True)
class Match:
    """Which rows a rule applies to: fnmatch globs per key column, eps values (None = all) and a norm.

    ``norm`` (linf, l2; None = any) picks the rows of one threat model. eps values are in that
    norm's unit, so a rule with eps and no norm is an L-inf rule. A row without a ``norm`` column
    (a file older than L2, a leak-check row) is L-inf; a clean row (norm null) is in every one.
    """

    globs: tuple[tuple[str, str], ...] = ()
    eps: tuple[float, ...] | None = None
    norm: str | None = None

    def row(self, row: dict[str, Any]) -> bool:
        """Does a result row carry every column the rule names, with matching values?"""
        if not all(col in row and fnmatchcase(str(row[col]), pat) for col, pat in self.globs):
            return False
        want = self.norm or ("linf" if self.eps is not None else None)
        have = row.get("norm", "linf")
        if want is not None and have is not None and have != want:
            return False
        if self.eps is None:
            return True
        return row.get("eps") is not None and any(math.isclose(float(row["eps"]), e) for e in self.eps)

    def model(self, label: str) -> bool:
        """Does a model label fit the rule's ``model`` glob (for verdicts and health findings)?"""
        return all(fnmatchcase(str(label), pat) for col, pat in self.globs if col == "model")

    def describe(self) -> str:
        """"model=a*, eps 8" for messages."""
        parts = [f"{c}={p}" for c, p in self.globs] + ([f"norm {self.norm}"] if self.norm else [])
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

    def __post_init__(self) -> None:
        bounds = BOUNDS if isinstance(self.metric, str) and self.metric.endswith(ACCURACIES) else ANY_BOUNDS
        fields.check(self, {"metric": ROW_FIELDS["metric"],
                            **{key: dataclasses.replace(rule, kind=float | None) for key, rule in bounds.items()}})

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

    def __post_init__(self) -> None:
        fields.check(self, {"metric": ROW_FIELDS["metric"], **DROP})

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

    def __post_init__(self) -> None:
        fields.check(self, LEAK)

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

    def __post_init__(self) -> None:
        fields.check(self, {"mode": HEALTH["health"]})  # gates.yaml's key is the mode's name

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

    def __post_init__(self) -> None:
        fields.check(self, TOP_FIELDS)


def default_rules() -> Rules:
    """Without --rules: every row present in both files may drop top-1 by at most 0.02."""
    return Rules((Regression("default rule", "", Match(), "top1", DEFAULT_MAX_DROP),))


# --- gates.yaml -------------------------------------------------------------------------------------------

_TRIGGERS = {"min": Floor, "max": Floor, "max_drop": Regression, "no_leak": NoLeak, "health": Health}
_ROW_KEYS = ("name", "model", "source", "target", "attack", "norm", "eps", "metric")
_ALLOWED = {
    Floor: (*_ROW_KEYS, "min", "max"),
    Regression: (*_ROW_KEYS, "max_drop"),
    NoLeak: ("name", "model", "no_leak", "allow_inconclusive"),
    Health: ("name", "model", "health"),
}
_ALL_KEYS = tuple(dict.fromkeys(k for keys in _ALLOWED.values() for k in keys))
_TOP_KEYS = ("confidence", "correction", "rules")
_EXAMPLE = "{attack: fgsm, eps: 8, min: 0.4}"
_L2_HINT = " (an L2 eps needs 'norm: l2' in the rule: without it eps is read in 1/255 units)"


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
    check_node(doc, TOP_FIELDS, source)
    confidence, correction = float(doc.get("confidence", 0.95)), doc.get("correction", "bonferroni")
    return Rules(tuple(_rule(e, source) for e in entries), confidence, correction, source)


def _no_unknown(node: dict[str, Any], allowed: tuple[str, ...], source: str, what: str) -> None:
    for key in node:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = (f"; did you mean '{close[0]}'?" if close else
                    "; it belongs to another kind of rule (split the rule)" if key in _ALL_KEYS else "")
            raise RobenchError(f"{locate(source, node, key)}: unknown key '{key}' {what}{hint}; "
                               f"allowed: {', '.join(allowed)}")


def _float(node: dict[str, Any], key: str) -> float | None:
    """A checked number of ``node`` as a float; None when absent."""
    return None if key not in node else float(node[key])


def _rule_kind(entry: dict[str, Any], where: str) -> type:
    kinds = list(dict.fromkeys(_TRIGGERS[k] for k in entry if k in _TRIGGERS))
    if len(kinds) != 1:
        found = f"it has {' and '.join(k for k in entry if k in _TRIGGERS)}" if kinds else "it has none"
        raise RobenchError(f"{where}: a rule needs exactly one of min/max, max_drop, no_leak or health ({found}); "
                           f"e.g. {_EXAMPLE}")
    return kinds[0]


def _match(entry: dict[str, Any], source: str) -> Match:
    """The rows a rule selects; its eps read in its norm's unit (1/255 units, or as written under ``norm: l2``)."""
    globs = [(key, entry[key]) for key in GLOB_KEYS if key in entry]
    norm = entry.get("norm")
    eps = None
    if "eps" in entry:
        values = entry["eps"] if isinstance(entry["eps"], list) else [entry["eps"]]
        where = locate(source, entry, "eps")
        if not values:
            raise RobenchError(f"{where}: 'eps' is empty; give a number (8) or a list ([4, 8]), or leave it out")
        if norm == "l2":
            eps = l2_eps_list(values, f"{where}: 'eps'")
        else:
            eps = unique_eps(values, [_linf_eps(v, f"{where}: 'eps'") for v in values], f"{where}: 'eps'")
    return Match(tuple(globs), eps, norm)


def _linf_eps(value: Any, where: str) -> float:
    """parse_eps, with a hint when the value may be an L2 eps written without ``norm: l2``."""
    try:
        return parse_eps(value, where)
    except RobenchError as e:
        raise RobenchError(f"{e}{_L2_HINT}") from None


def _rule(entry: Any, source: str) -> Rule:
    if not isinstance(entry, dict):
        raise RobenchError(f"{source}: each rule is a mapping such as {_EXAMPLE}, got {entry!r}")
    where = locate(source, entry)
    _no_unknown(entry, _ALL_KEYS, source, "in a rule")
    kind = _rule_kind(entry, where)
    _no_unknown(entry, _ALLOWED[kind], source, f"for a {KINDS[kind]} rule")
    check_node(entry, ROW_FIELDS, source)
    return _BUILDERS[kind](entry, source, where, entry.get("name", ""), _match(entry, source))


def _floor(entry: dict[str, Any], source: str, where: str, name: str, match: Match) -> Floor:
    metric = entry.get("metric", "top1")
    check_node(entry, BOUNDS if metric.endswith(ACCURACIES) else ANY_BOUNDS, source)  # counts, gaps: any number
    low, high = _float(entry, "min"), _float(entry, "max")
    if low is not None and high is not None and low > high:
        raise RobenchError(f"{where}: min {low:g} is above max {high:g}; no value can pass")
    return Floor(where, name, match, metric, low, high)


def _regression(entry: dict[str, Any], source: str, where: str, name: str, match: Match) -> Regression:
    metric = entry.get("metric", "top1")
    if not metric.endswith(("top1", "top5")):
        raise RobenchError(f"{locate(source, entry, 'metric')}: max_drop judges accuracies (top1, top5, "
                           f"target_top1, ...), not '{metric}'; use min/max for other metrics")
    check_node(entry, DROP, source)
    return Regression(where, name, match, metric, float(entry["max_drop"]))


def _no_leak(entry: dict[str, Any], source: str, where: str, name: str, match: Match) -> NoLeak:
    if entry["no_leak"] is not True:
        raise RobenchError(f"{locate(source, entry, 'no_leak')}: write 'no_leak: true' (anything else checks "
                           f"nothing; remove the rule instead)")
    check_node(entry, LEAK, source)
    return NoLeak(where, name, match, entry.get("allow_inconclusive", True))


def _health(entry: dict[str, Any], source: str, where: str, name: str, match: Match) -> Health:
    check_node(entry, HEALTH, source)
    return Health(where, name, match, entry["health"])


_Builder = Callable[[dict[str, Any], str, str, str, Match], Rule]  # (entry, source, where, name, match) -> rule
_BUILDERS: dict[type, _Builder] = {Floor: _floor, Regression: _regression, NoLeak: _no_leak, Health: _health}
