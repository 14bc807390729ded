"""Fuzzing the parsers of files robench is given: any input gives a valid config or document, or one clear RobenchError.

A suite (and a gates file) is typed by people; a traceback from a typo would break the
exit-code contract, and a silent default would change the numbers. A results file is
written by robench but may be damaged, edited or made by another tool: whatever the reader
accepts, gates and reports must handle without a crash.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from robench.attacks.suite import Suite, parse_suite
from robench.errors import RobenchError
from robench.gate.rules import Rules, parse_rules

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


@pytest.mark.slow
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
@example("0: !0")  # a local tag: the number check split it at ":" and exited 3 (IndexError)
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


# --- results files ---------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["clean", "fgsm", "eval", "packbits-base64", "AAAA", "gA==", "s0", 0.5, 1, 2, -1]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | st.sampled_from(
        ["rows", "model", "top1", "n", "eps", "attack", "samples", "records", "ids"]), inner, max_size=4),
    max_leaves=10,
)


def _real_doc() -> dict:
    from results_docs import make_doc

    bits = np.arange(8) % 3 != 0
    outcomes = {(m, a, e): bits for m in ("a", "b") for a, e in (("clean", 0.0), ("fgsm", 8.0))}
    return make_doc(outcomes, health=[{"check": "zero_gradients", "model": "a", "attack": "fgsm", "eps": 8.0,
                                        "message": "m", "docs": "d"}],
                    config={"suite": {"attacks": [{"id": "fgsm", "name": "fgsm", "eps": [8.0]}], "cascade": False}},
                    models=[{"label": "a", "spec": "zoo:a", "weights_sha256": "0" * 64}])


def _paths(node, loc=()) -> list[tuple]:
    """Every path into a document, itself included."""
    out = [loc]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out += _paths(value, (*loc, key))
    return out


@st.composite
def mutated_docs(draw) -> dict:
    """A real results document with one field (or several) replaced by a random JSON value, or dropped."""
    doc = _real_doc()
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        *parent, key = draw(st.sampled_from(paths))
        node = doc
        for k in parent:
            node = node[k]
        if draw(st.booleans()) and isinstance(node, dict):
            del node[key]
        else:
            node[key] = draw(JSON_VALUES)
    return doc


def read_or_one_line(text: str):
    """The reader's document for ``text`` as fuzz.json, or None after checking its error is one line naming the file."""
    from robench.results.read import load_results

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            return load_results(path)
        except RobenchError as e:
            message = str(e)
            assert message and "\n" not in message and "Traceback" not in message
            assert "fuzz.json" in message, message
            return None


def readers_handle(doc: dict) -> None:
    """What gate, baseline update and report do with a document: no exception but a one-line RobenchError."""
    from robench.gate import judge as gate
    from robench.render import report_doc
    from robench.results.read import per_sample, row_label

    for row in doc["rows"]:
        row_label(row)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc  # a baseline copy is strict JSON
    assert not any(isinstance(v, float) and not math.isfinite(v) for r in doc["rows"] for v in r.values())
    inputs = [report_doc.Input("fuzz.json", doc)]
    for call in (lambda: per_sample(doc, "top1"), lambda: per_sample(doc, "top5"),
                 lambda: gate.run_gate(doc, doc, parse_rules(RULES, "gates.yaml"), ("fuzz.json", "base.json")),
                 lambda: report_doc.check_mergeable(inputs), lambda: report_doc.leaderboard(inputs),
                 lambda: report_doc.rows_text(inputs[0].rows), lambda: report_doc.provenance(doc),
                 lambda: report_doc.health_flags(doc)):
        try:
            call()
        except RobenchError as e:
            assert "\n" not in str(e)


RULES = "rules:\n  - {max_drop: 0.05}\n  - {metric: top1, min: 0.1}\n  - {health: warn}\n"
RESULTS_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RESULTS_FUZZ
@given(mutated_docs())
def test_mutated_results_read_or_fail_in_one_line(doc) -> None:
    read = read_or_one_line(json.dumps(doc))
    if read is not None:
        readers_handle(read)


@RESULTS_FUZZ
@given(JSON_VALUES)
def test_any_json_reads_or_fails_in_one_line(value) -> None:
    read = read_or_one_line(json.dumps(value))
    if read is not None:
        readers_handle(read)


@RESULTS_FUZZ
@given(st.text(alphabet='{}[]",:0123456789.eE-+ntrufalsNIiy \n', max_size=80))
def test_json_syntax_noise_reads_or_fails_in_one_line(text: str) -> None:
    read = read_or_one_line(text)
    if read is not None:
        readers_handle(read)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_docs())
def test_mutated_results_through_the_cli_exit_0_1_or_2_in_one_line(doc) -> None:
    from results_docs import invoke

    with tempfile.TemporaryDirectory() as tmp:
        path, rules = Path(tmp) / "fuzz.json", Path(tmp) / "gates.yaml"
        path.write_text(json.dumps(doc))
        rules.write_text(RULES)
        before = path.read_bytes()
        for args in (["gate", path, "--baseline", path, "--rules", rules, "--summary", Path(tmp) / "s.md"],
                     ["baseline", "update", path, Path(tmp) / "b.json"], ["report", path, "-o", Path(tmp) / "r.md"]):
            r = invoke(*args)
            assert r.exit_code in (0, 1, 2), (args[0], r.exit_code, r.stderr)
            assert "Traceback" not in r.stdout + r.stderr
            if r.exit_code == 2:
                lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
                assert len(lines) == 1 and lines[0].startswith("robench: error: "), r.stderr
        assert path.read_bytes() == before


# --- checkpoint metadata ---------------------------------------------------------------------------

ZOO_META_KEYS = ["arch", "num_classes", "classes", "input_size", "interpolation", "crop_pct", "crop_mode", "mean",
                 "std", "dataset", "model_kwargs", "seed", "robench_version", "train_accuracy", "train_adv_accuracy",
                 "val_accuracy", "recipe", "bogus"]


@st.composite
def mutated_metadata(draw) -> dict:
    """The zoo's effnet-base metadata with some fields replaced by any JSON, or removed."""
    from robench.models import zoo
    from robench.models.checkpoint import read_metadata

    meta = read_metadata(zoo.get("effnet-base").path)
    for key in draw(st.lists(st.sampled_from(ZOO_META_KEYS), min_size=1, max_size=3)):
        if draw(st.booleans()) and key in meta:
            del meta[key]
        else:
            meta[key] = draw(JSON_VALUES)
    return meta


def _checkpoint_with(meta_text: str, folder: Path) -> Path:
    """The zoo's effnet-base weights with this metadata text."""
    from safetensors.torch import load_file, save_file

    from robench.models import zoo

    path = folder / "fuzz.safetensors"
    save_file(load_file(str(zoo.get("effnet-base").path)), str(path), metadata={"robench": meta_text})
    return path


def metadata_or_one_line(meta_text: str) -> dict | None:
    """read_metadata's result for a checkpoint carrying ``meta_text``, or None after a one-line error naming it."""
    from robench.models.checkpoint import read_metadata

    with tempfile.TemporaryDirectory() as tmp:
        path = _checkpoint_with(meta_text, Path(tmp))
        try:
            return read_metadata(path)
        except RobenchError as e:
            assert "\n" not in str(e) and "fuzz.safetensors" in str(e), str(e)
            return None


@RESULTS_FUZZ
@given(mutated_metadata())
def test_mutated_checkpoint_metadata_reads_or_fails_in_one_line(meta) -> None:
    metadata_or_one_line(json.dumps(meta))


@RESULTS_FUZZ
@given(JSON_VALUES)
def test_any_json_as_checkpoint_metadata_reads_or_fails_in_one_line(value) -> None:
    metadata_or_one_line(json.dumps(value))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_metadata())
def test_metadata_the_reader_accepts_loads_or_fails_in_one_line(meta) -> None:
    """What passes the schema must not crash the model loader further on (exit 3): it loads or is one line."""
    from robench.models import load_model, parse_spec

    with tempfile.TemporaryDirectory() as tmp:
        path = _checkpoint_with(json.dumps(meta), Path(tmp))
        try:
            load_model(parse_spec(str(path)), num_classes=10)
        except RobenchError as e:
            assert "\n" not in str(e), str(e)


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
