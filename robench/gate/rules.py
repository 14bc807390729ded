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

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from robench.attacks.suite import parse_eps, unique_eps
from robench.core.files import read_text
from robench.core.yaml_read import locate, read_yaml
from robench.errors import RobenchError

GLOB_KEYS = ("model", "source", "target", "attack")
CORRECTIONS = ("bonferroni", "none")
DEFAULT_MAX_DROP = 0.02


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
            high: float = 1.0, hint: str = " (a share: 0.4 for 40%)") -> float:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RobenchError(f"{locate(source, node, key)}: '{key}' must be a number in [{low:g}, {high:g}]{hint}, "
                           f"got {value!r}")
    return float(value)


def _bound(node: dict[str, Any], key: str, source: str, low: float = 0.0, high: float = 1.0,
           hint: str = " (a share: 0.4 for 40%)") -> float | None:
    """``node[key]`` checked as ``_number`` checks it, or None where the key is absent."""
    return _number(node, key, source, None, low, high, hint) if key in node else None


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
        eps = unique_eps(values, [parse_eps(v, f"{where}: 'eps'") for v in values], f"{where}: 'eps'")
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
        low, high = (_bound(entry, k, source) for k in ("min", "max"))
    else:  # counts, gaps: any number
        low, high = (_bound(entry, k, source, -math.inf, math.inf, "") for k in ("min", "max"))
    if low is not None and high is not None and low > high:
        raise RobenchError(f"{where}: min {low:g} is above max {high:g}; no value can pass")
    return Floor(where, name, match, metric, low, high)


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


_Builder = Callable[[dict[str, Any], str, str, str, Match], Rule]  # (entry, source, where, name, match) -> rule
_BUILDERS: dict[type, _Builder] = {Floor: _floor, Regression: _regression, NoLeak: _no_leak, Health: _health}
