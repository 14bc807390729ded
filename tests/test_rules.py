"""Gate rules (gates.yaml): every mistake names the file, the line and the key; rules are frozen records."""

from __future__ import annotations

from pathlib import Path

import pytest

from robench.errors import RobenchError
from robench.gate.rules import KINDS, Floor, Health, Match, Regression, Rules, load_rules, parse_rules

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "examples" / "ci"


def rules(text: str) -> Rules:
    return parse_rules(text, "gates.yaml")


# --- rule files: every mistake names the file, the line and the key ------------------------------

@pytest.mark.parametrize(("text", "needles"), [
    ("rules:\n  - {attack: fgsm, min: 0.4}\n  - attack: fgsm\n    mim: 0.4\n",
     ["gates.yaml line 4", "unknown key 'mim' in a rule; did you mean 'min'?"]),
    ("rules:\n  - attack: fgsm\n    eps: 8\n", ["line 2", "exactly one of min/max, max_drop"]),
    ("- {min: 0.4, max_drop: 0.02}", ["line 1", "min and max_drop"]),
    ("- {min: 40}", ["'min' must be a number in [0, 1]", "0.4 for 40%"]),
    ("- {min: 0.8, max: 0.2}", ["min 0.8 is above max 0.2"]),
    ("- {max_drop: 0.02, metric: success_rate}", ["max_drop judges accuracies"]),
    ("- {no_leak: false}", ["no_leak: true"]),
    ("- {health: loud}", ["strict or warn"]),
    ("- {health: warn, eps: 8}", ["unknown key 'eps' for a health rule", "another kind of rule"]),
    ("- {model: 3, min: 0.4}", ["'model' must be a name or glob"]),
    ("- {eps: 300, min: 0.4}", ["out of range"]),
    ("- {eps: [8, 8/255], min: 0.4}", ["line 1", "'eps': eps 8 is given twice", "give each eps once"]),
    ("confidence: 2\nrules: [{min: 0.4}]", ["line 1", "'confidence'"]),
    ("correction: holm\nrules: [{min: 0.4}]", ["bonferroni or none"]),
    ("rule: [{min: 0.4}]", ["line 1", "unknown key 'rule' at the top level"]),
    ("rules: []", ["non-empty list"]),
    ("rules:\n  - {min: 0.4\n", ["line 3", "invalid YAML"]),
    ("- {min: 0.4, min: 0.5}", ["duplicate key 'min'"]),
    ("- 7", ["each rule is a mapping"]),
    ("- {min: .nan}", ["gates.yaml line 1: 'min': .nan is not a finite number; expected a number such as 0.5"]),
    ("- {metric: gap, max: .inf}", ["line 1: 'max': .inf is not a finite number"]),
    ("- {metric: gap, min: -.inf}", ["'min': -.inf is not a finite number"]),
    ("- {max_drop: .inf}", ["'max_drop': .inf is not a finite number"]),
    (f"- {{metric: gap, min: {'9' * 5000}}}", ["line 1: 'min': 99999999999999999999... (5000 characters) is too "
                                               "large; expected a whole number of at most 2**63 - 1"]),
    (f"confidence: {'9' * 5000}\nrules: [{{min: 0.4}}]", ["line 1: 'confidence': 9999", "is too large"]),
    ("- {eps: [8, .nan], min: 0.4}", ["'eps': .nan is not a finite number"]),
    ("- &r {min: 0.4}\n- *r", ["line 2: alias '*r' refused", "write the value out"]),
])
def test_bad_rules(text: str, needles: list[str]) -> None:
    with pytest.raises(RobenchError) as e:
        rules(text)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def _yaml_example(path: Path, after: str = "") -> str:
    """The first YAML block of a page, after the heading ``after`` when given."""
    text = path.read_text(encoding="utf-8")
    text = text.split(after, 1)[1] if after else text
    return text.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_documented_rules_examples_parse() -> None:
    example = _yaml_example(REPO / "docs" / "gates.md", "## CI gates")
    kinds = [KINDS[type(r)] for r in rules(example).rules]
    assert kinds == ["floor", "floor", "regression", "no_leak", "health"]
    assert [KINDS[type(r)] for r in rules(_yaml_example(REPO / "README.md")).rules] == ["floor", "regression", "health"]
    assert [type(r) for r in load_rules(CI / "gates.yaml").rules] == [Regression, Floor, Floor, Health]


def test_rules_are_frozen_dataclasses() -> None:
    parsed = rules("confidence: 0.9\nrules:\n  - {name: floor, model: 'a*', attack: fgsm, eps: [4, 8], min: 0.4}\n"
                   "  - {max_drop: 0.01, metric: top5}\n  - {no_leak: true}\n  - {health: warn}\n")
    floor, drop, leak, health = parsed.rules
    assert floor == Floor("gates.yaml line 3", "floor", Match((("model", "a*"), ("attack", "fgsm")), (4.0, 8.0)),
                          "top1", 0.4, None)
    assert (drop.max_drop, drop.metric, leak.allow_inconclusive, health.mode) == (0.01, "top5", True, "warn")
    assert parsed.confidence == 0.9 and parsed.correction == "bonferroni"
    with pytest.raises(AttributeError):
        floor.min = 0.1


# --- the L2 threat model ----------------------------------------------------------------------------

ROWS = [{"model": "m", "attack": "clean", "norm": None, "eps": 0.0}, {"model": "m", "attack": "pgd", "norm": "linf",
        "eps": 0.5}, {"model": "m", "attack": "pgd-l2", "norm": "l2", "eps": 0.5},
        {"model": "m", "attack": "worst-l2", "norm": "l2", "eps": 0.5}, {"model": "old", "attack": "fgsm", "eps": 0.5}]


@pytest.mark.parametrize(("rule", "matched"), [
    ("{norm: l2, eps: 0.5, min: 0.1}", ["pgd-l2", "worst-l2"]),  # an L2 eps read as written
    ("{eps: 0.5/255, min: 0.1}", ["pgd", "fgsm"]),  # no norm: L-inf rows, and a file older than L2 is L-inf
    ("{norm: l2, min: 0.1}", ["clean", "pgd-l2", "worst-l2"]),  # clean (eps 0) is in every threat model
    ("{norm: linf, min: 0.1}", ["clean", "pgd", "fgsm"]),
    ("{min: 0.1}", ["clean", "pgd", "pgd-l2", "worst-l2", "fgsm"]),
])
def test_a_rule_selects_rows_of_its_norm(rule: str, matched: list[str]) -> None:
    (parsed,) = rules(f"- {rule}").rules
    assert [r["attack"] for r in ROWS if parsed.match.row(r)] == matched


@pytest.mark.parametrize(("text", "needles"), [
    ("- {norm: L2, min: 0.4}", ["line 1", "'norm' must be linf or l2, got 'L2'"]),
    ("- {eps: 0.5, min: 0.4}", ["eps 0.5 is in 1/255 units", "an L2 eps needs 'norm: l2' in the rule"]),
    ("- {norm: l2, eps: 8/255, min: 0.4}", ["'eps': eps '8/255' is not a plain number; under norm l2"]),
    ("- {norm: l2, health: warn}", ["unknown key 'norm' for a health rule"]),
])
def test_bad_l2_rules(text: str, needles: list[str]) -> None:
    with pytest.raises(RobenchError) as e:
        rules(text)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_an_l2_rule_describes_its_norm() -> None:
    (parsed,) = rules("- {attack: 'worst*', norm: l2, eps: [0.25, 0.5], min: 0.4}").rules
    assert parsed.match == Match((("attack", "worst*"),), (0.25, 0.5), "l2")
    assert parsed.match.describe() == "attack=worst*, norm l2, eps 0.25,0.5"
