"""One way to check a field (robench.core.fields), and library messages that name fields, never flags."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from click.testing import CliRunner

from robench.cli.main import main, option
from robench.core.fields import GOT, VALUE_FIRST, Rule, check, fits, say, typed
from robench.errors import FieldError, FieldNote

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class _Config:
    count: int = 1
    share: float = 0.5
    mode: Literal["a", "b"] = "a"
    size: int | None = None

    def __post_init__(self) -> None:
        check(self, _FIELDS)


_FIELDS = typed(_Config, count=Rule(low=1, high=10_000_000, finite=True), share=Rule(low=0, high=1, low_open=True,
                                                                                    finite=True, must="be in (0, 1]"))


@pytest.mark.parametrize(("fields", "message"), [
    ({"count": 0}, "count must be at least 1, got 0"),
    ({"count": 10**8}, "count must be at most 10,000,000, got 100000000"),
    ({"count": 2.0}, "count must be int, got 2.0"),
    ({"count": True}, "count must be int, got True"),  # a bool is no number
    ({"share": math.nan}, "share must be a finite number, got nan"),
    ({"share": 0}, "share must be in (0, 1], got 0"),
    ({"share": "x"}, "share must be float, got 'x'"),
    ({"mode": "c"}, "mode must be a | b, got 'c'"),
    ({"size": "8"}, "size must be int or null, got '8'"),
])
def test_a_rule_names_the_field_and_what_it_must_be(fields: dict, message: str) -> None:
    with pytest.raises(FieldError) as err:
        _Config(**fields)
    assert (str(err.value), err.value.field) == (message, next(iter(fields)))


def test_kinds_come_first_then_finite_then_ranges() -> None:
    with pytest.raises(FieldError, match="^share must be float"):  # count's range is wrong too, but later
        _Config(count=0, share="x")  # type: ignore[arg-type]
    with pytest.raises(FieldError, match="^share must be a finite number"):
        _Config(count=0, share=math.inf)


def test_whole_numbers_of_other_types_become_ints_and_none_passes_ranges() -> None:
    cfg = _Config(count=np.int64(3), size=None)  # type: ignore[arg-type]
    assert type(cfg.count) is int and cfg.count == 3
    assert fits(int, np.int32(2)) and not fits(int, True) and fits(float, 2) and not fits(float, False)
    assert say(int | None) == "int or null" and say(Literal[True, "x"]) == "true | x"


def test_a_mapping_is_checked_on_the_keys_it_holds() -> None:
    rules = {"a": Rule(int, "a whole number", low=0), "b": Rule(str, "text")}
    check({"a": 1}, rules)  # b is absent: its default applies
    with pytest.raises(FieldError, match=r"^a -1 must be at least 0$"):
        check({"a": -1}, rules, VALUE_FIRST)
    with pytest.raises(FieldError, match=r"^b must be text, got 3$"):
        check({"a": 1, "b": 3}, rules, GOT)


def test_choices_tests_and_shown_values() -> None:
    rules = {"c": Rule(choices=("x", "y")), "t": Rule(test=lambda v: None if v else "be set", show=str)}
    with pytest.raises(FieldError, match=r"^c must be one of x, y, got 'z'$"):
        check({"c": "z"}, rules)
    with pytest.raises(FieldError, match=r"^t must be set, got $"):
        check({"t": ""}, rules)
    with pytest.raises(FieldError, match="must be a number"):  # a range refuses what is no number
        check({"r": "x"}, {"r": Rule(low=0)})


def test_a_typo_in_a_rule_table_is_caught_when_it_is_built() -> None:
    with pytest.raises(TypeError, match="_Config has no field cuont"):
        typed(_Config, cuont=Rule(low=1))


def test_a_field_error_names_other_fields_and_keeps_them_when_wrapped() -> None:
    e = FieldError("rules", "give {name} or {baseline}", "baseline")
    assert str(e) == "give rules or baseline"
    assert e.named(option(e.field), option) == "give --rules or --baseline"
    wrapped = e.wrapped("gates.yaml: ", " (twice)")
    assert (str(wrapped), wrapped.named("--rules", option)) == ("gates.yaml: give rules or baseline (twice)",
                                                                "gates.yaml: give --rules or --baseline (twice)")


def test_the_cli_maps_fields_to_options() -> None:
    assert [option(f) for f in ("batch_size", "models", "suite", "health_probes", "clean_refs", "eps_unit")] == \
        ["--batch-size", "--model", "--attacks", "--no-health", "--clean-ref", "--eps-unit"]
    assert [option(f) for f in ("BASELINE", "-o", "RESULTS")] == ["BASELINE", "-o", "RESULTS"]  # the CLI's own words


@pytest.mark.parametrize(("args", "line"), [
    (["--attack", "fgsm", "--attack", "fgsm"], "--attack fgsm is given twice; give each attack once"),
    (["--eps", "8,,16"], "--eps: '8,,16' has an empty item; give eps separated by single commas, e.g. 2,4,8"),
    (["--eps", "8,8"], "--eps: eps 8 is given twice; give each eps once"),
    (["--eps", " , "], "--eps: give at least one eps, e.g. --eps 2,4,8"),
    (["--eps", "0.3"], "--eps: eps 0.3 is in 1/255 units, i.e. 0.0012 in pixels. Did you mean 0.3 in pixels? Write "
                       "76.5 or 0.3*255 or 76.5/255 (or 0.3px, or --eps-unit pixel)"),
    (["--plot", "f.jpg"], "--plot f.jpg: unknown format '.jpg'; use one of .png, .svg, .pdf"),
    (["--per-sample", "s.json"], "--per-sample s.json: unknown format '.json'; use one of .csv, .parquet"),
])
def test_messages_that_name_fields_in_the_library_name_options_in_the_cli(args: list[str], line: str) -> None:
    result = CliRunner().invoke(main, ["eval", "zoo:effnet-base", *args])
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"robench: error: {line}"]


def test_the_library_gate_names_its_fields() -> None:
    from robench.gate.judge import gate

    with pytest.raises(FieldError) as err:
        gate({"rows": []}, None)
    assert str(err.value) == "nothing to gate: give rules gates.yaml, baseline BASELINE.json, or both"
    assert err.value.named(option(err.value.field), option) == \
        "nothing to gate: give --rules gates.yaml, --baseline BASELINE.json, or both"


# --- no flag in a library message -----------------------------------------------------------------------

FLAG = re.compile(r"--[A-Za-z]")
QUOTED_COMMANDS = (  # messages may quote a whole command line: its options are that command's, not a field's
    "'robench eval --out FILE.json'",  # results readers (gate, report, baseline) say which command writes one
    "'robench eval --out FILE.csv'",
    "torchrun --nproc-per-node",  # the launcher's own option: robench never starts processes
)


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    owners = [n for n in ast.walk(tree) if isinstance(n, kinds)]
    return {id(n.body[0].value) for n in owners if n.body and isinstance(n.body[0], ast.Expr)}


def flags_in_messages(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal but a docstring that names a --flag: raises, warnings, defaults.

    Docstrings and comments may say what the CLI does; messages and the values that become them may not.
    """
    tree = ast.parse(source)
    docs, found = _docstrings(tree), []
    for part in ast.walk(tree):
        if isinstance(part, ast.Constant) and isinstance(part.value, str) and id(part) not in docs:
            text = part.value
            for quoted in QUOTED_COMMANDS:
                text = text.replace(quoted, "")
            if FLAG.search(text):
                found.append((part.lineno, part.value))
    return found


def test_no_library_message_names_a_flag() -> None:
    """The library names the field (FieldError, FieldNote); the CLI maps it to the option the user typed."""
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}" for path in sorted((ROOT / "robench").rglob("*.py"))
             for line, text in flags_in_messages(path.read_text(encoding="utf-8"))]
    assert found == []


def test_the_flag_walk_sees_f_strings_and_warnings_and_allows_quoted_commands() -> None:
    planted = 'def f(x):\n    """Say --data."""\n    raise RobenchError(f"{x}: pass --data {x}")\n'
    assert flags_in_messages(planted) == [(3, ": pass --data ")]
    assert flags_in_messages("warn('set --mean')\n") == [(1, "set --mean")]
    quoted = "raise RobenchError(\"give a file written by 'robench eval --out FILE.json'\")\n"
    assert flags_in_messages(quoted) == [] and flags_in_messages("style = '--'\n") == []


def test_a_field_note_names_fields_in_the_library_and_options_in_the_cli() -> None:
    note = FieldNote("pass {data} or {class_order} lexical", "data", "class_order")
    assert note == "pass data or class_order lexical" and isinstance(note, str)
    assert note.named(option) == "pass --data or --class-order lexical"
