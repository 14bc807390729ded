"""Fuzzing the hand-written config parsers: any input gives a valid config or one clear RobenchError.

A suite (and a gates file) is typed by people; a traceback from a typo would break the
exit-code contract, and a silent default would change the numbers.
"""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robench.errors import RobenchError
from robench.rules import Rules, parse_rules
from robench.suite import Suite, parse_suite

KEYS = ["eps", "attacks", "name", "id", "label", "steps", "step_size", "random_start", "bogus", "eps "]
NAMES = ["fgsm", "step_ll", "bim", "iter_ll", "pgd", "nope", ""]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-300, 300), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES + ["true", "predicted", "8/255", "1/0", "2,4", "-1", "1e400", "nan"]),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)
ENTRY = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5) | st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES)}, optional={k: VALUES for k in KEYS[3:]}
)
DOCS = st.one_of(
    VALUES,
    st.fixed_dictionaries({"attacks": st.lists(ENTRY, max_size=4)}, optional={"eps": VALUES, "bogus": VALUES}),
)
GATE_KEYS = ["rules", "confidence", "correction", "name", "model", "attack", "eps", "metric", "min", "max",
             "max_drop", "no_leak", "allow_inconclusive", "health", "source", "target", "bogus"]
GATE_SCALARS = st.one_of(SCALARS, st.sampled_from(["*", "fgsm", "top1", "top5", "strict", "warn", "bonferroni", 0.4]))
GATE_RULE = st.dictionaries(st.sampled_from(GATE_KEYS), GATE_SCALARS | st.lists(GATE_SCALARS, max_size=3), max_size=5)
GATE_DOCS = st.one_of(
    VALUES,
    st.fixed_dictionaries({"rules": st.lists(GATE_RULE, max_size=4)},
                          optional={"confidence": GATE_SCALARS, "correction": GATE_SCALARS, "bogus": VALUES}),
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parsed_or_one_line(parse, text: str, name: str):
    """``parse(text, name)``'s result, or None after checking its error is one line starting with ``name``."""
    try:
        return parse(text, name)
    except RobenchError as e:
        message = str(e)
        assert message and "\n" not in message and "Traceback" not in message
        assert message.startswith(name), message
        return None


def check_one_line(text: str) -> None:
    suite = parsed_or_one_line(parse_suite, text, "fuzz.yaml")
    if suite is None:
        return
    assert isinstance(suite, Suite) and suite.attacks
    for a in suite.attacks:
        assert a.eps and all(0 <= e <= 255 for e in a.eps)


@FUZZ
@given(DOCS)
def test_structured_suites_parse_or_fail_in_one_line(doc) -> None:
    check_one_line(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.text(max_size=200))
def test_any_text_parses_or_fails_in_one_line(text: str) -> None:
    check_one_line(text)


@FUZZ
@given(st.text(alphabet="eps:[]{}-, \n\t'\"&*!|>#%@`0123456789./abcfgilmnpst_", max_size=120))
def test_yaml_syntax_noise_parses_or_fails_in_one_line(text: str) -> None:
    check_one_line(text)


def check_rules_one_line(text: str) -> None:
    rules = parsed_or_one_line(parse_rules, text, "gates.yaml")
    assert rules is None or isinstance(rules, Rules)


@FUZZ
@given(GATE_DOCS)
def test_structured_gate_rules_parse_or_fail_in_one_line(doc) -> None:
    check_rules_one_line(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.text(max_size=200))
def test_any_text_as_gate_rules_parses_or_fails_in_one_line(text: str) -> None:
    check_rules_one_line(text)


NUMBER_TEXT = st.one_of(
    st.integers().map(str), st.floats().map(repr),
    st.text(alphabet="0123456789", min_size=1, max_size=6000),  # beyond 4300 digits Python refuses to read them
    st.sampled_from([".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1.0e+999", "-1.0e+400", "0x" + "f" * 40, "1_000"]),
)


def _finite(value) -> bool:
    import dataclasses
    import math

    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return abs(value) <= 2**63 - 1
    if dataclasses.is_dataclass(value):
        return all(_finite(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


@FUZZ
@given(st.sampled_from(["steps", "step_size", "restarts", "eps"]), NUMBER_TEXT)
def test_any_number_in_a_suite_parses_finite_or_fails_in_one_line(key: str, number: str) -> None:
    """A 5,000-digit integer used to exit 3 (ValueError), and .nan reach an attack's config."""
    suite = parsed_or_one_line(parse_suite, f"eps: [8]\nattacks:\n  - name: apgd\n    {key}: {number}\n", "fuzz.yaml")
    assert suite is None or _finite(suite.attacks)


@FUZZ
@given(st.sampled_from(["min", "max", "max_drop", "confidence"]), st.sampled_from(["top1", "gap"]), NUMBER_TEXT)
def test_any_number_in_gate_rules_parses_finite_or_fails_in_one_line(key: str, metric: str, number: str) -> None:
    """A gap rule took min: -.inf, and a 400-digit one exited 3 (OverflowError)."""
    text = f"confidence: {number}\nrules: [{{min: 0.4}}]" if key == "confidence" else \
        f"rules:\n  - {{metric: {metric}, {key}: {number}}}\n"
    rules = parsed_or_one_line(parse_rules, text, "gates.yaml")
    assert rules is None or (_finite(rules.rules) and _finite(rules.confidence))
