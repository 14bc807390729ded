"""One way to check a configuration field: a rule per field, declared as data, and ``check``.

A configuration dataclass (RunSpec, EvalConfig, LeakConfig, TrainConfig, Preprocess, InputConfig,
an attack's config, a suite, a gate rule) declares what each field accepts as a ``Rule`` (the
accepted types and how to say them, choices, a range, finite) and calls ``check(self, RULES)`` in
``__post_init__``. A bad value raises ``robench.errors.FieldError`` naming the field: the library
says ``limit must be ...``, the CLI, which maps a field to its option, ``--limit must be ...``, and a
reader of a hand-written YAML file its file and line, after checking the mapping it read against
the same rules.

Which of the two checks a new field takes: a field of a configuration (set in code, on the command
line, or in a suite or gates file) takes a Rule here, because its error names the field and the CLI
turns that into the option. A field of a file robench writes and reads back (a results file,
checkpoint metadata) takes a pydantic field (``robench.results.schema``, ``robench.models.checkpoint``),
because its error names the file and a path inside it (``rows[3].top1``) that no option names, and
the same models publish the file's JSON Schema.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from robench.errors import FieldError

GOT = "{name} must {must}, got {value}"  # limit must be a positive number, got 0
VALUE_FIRST = "{name} {value} must {must}"  # TrainConfig's: lam -0.1 must be >= 0


@dataclass(frozen=True)
class Rule:
    """What one field accepts. Every part is optional; None passes the choices, ``test`` and the range.

    ``check`` takes the parts in this order, each over every field before the next: the kind, finite,
    then the choices, ``test`` and the range. A value outside the choices or the range gets ``must``
    (a verb phrase: "be a whole number in [1, 1024]"), or a text made of the choices or bounds.
    """

    kind: Any = None  # a type hint (int, float, bool, str, a class, Literal[...], X | None); None: any type
    says: str = ""  # the kind in words ("a whole number or None"); default: the hint in YAML's ("int or null")
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is out: low < value
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    finite: bool = False  # NaN and inf refused by name (NaN passes no comparison, inf passes every "> 0")
    test: Callable[[Any], str | None] | None = None  # any other condition: what the value breaks ("be > 0"), or None
    must: str = ""
    show: Callable[[Any], str] = repr  # how the message writes the value


Rules = Mapping[str, Rule]


def check(target: Any, rules: Rules, form: str = GOT) -> None:
    """Raise FieldError for the first field of ``target`` that breaks its rule, naming the field.

    ``target`` is a dataclass instance, whose whole numbers of other types (numpy's) then become
    plain ints for results files, or a mapping, of which only the keys present are checked (the
    others take their defaults). ``form`` writes the message: ``GOT`` or ``VALUE_FIRST``.
    """
    values = _values(target, rules)
    for step in (_kind_problem, _finite_problem, _range_problem):
        for name, value in values.items():
            must = step(rules[name], value)
            if must is not None:
                raise FieldError(name, form.replace("{must}", must).replace("{value}", rules[name].show(value)))
    if isinstance(target, Mapping):
        return
    for name, value in values.items():
        if isinstance(value, numbers.Integral) and not isinstance(value, int):
            object.__setattr__(target, name, int(value))  # frozen dataclasses too: this is their construction


def typed(cls: type, **rules: Rule) -> dict[str, Rule]:
    """A rule for every field of dataclass ``cls``: the field's type hint as its kind, with ``rules``' parts."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(rules) - set(names)
    if unknown:  # a typo would leave a field unchecked
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    return {n: dataclasses.replace(rules.get(n, Rule()), kind=hints[n]) for n in names}


def fits(hint: Any, value: Any) -> bool:
    """Does ``value`` have the type ``hint`` names? A bool is no number; any whole number (numpy's) is an int."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(fits(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        number = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, number) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def say(hint: Any) -> str:
    """A type hint in the words of a YAML file: "int or null", "true | predicted", "float"."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " | ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(say(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else str(getattr(origin or hint, "__name__", hint))


def _values(target: Any, rules: Rules) -> dict[str, Any]:
    if isinstance(target, Mapping):
        return {name: target[name] for name in rules if name in target}
    return {name: getattr(target, name) for name in rules}


def _kind_problem(rule: Rule, value: Any) -> str | None:
    if rule.kind is None or fits(rule.kind, value):
        return None
    return f"be {rule.says or say(rule.kind)}"


def _finite_problem(rule: Rule, value: Any) -> str | None:
    return "be a finite number" if rule.finite and isinstance(value, float) and not math.isfinite(value) else None


def _range_problem(rule: Rule, value: Any) -> str | None:
    if value is None:
        return None
    if rule.choices and value not in rule.choices:
        return rule.must or f"be one of {', '.join(map(str, rule.choices))}"
    broken = rule.test(value) if rule.test is not None else None
    if broken is not None or (rule.low is None and rule.high is None):
        return broken
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return rule.must or "be a number"
    return _bounds_problem(rule, value)


def _bounds_problem(rule: Rule, value: Any) -> str | None:
    """What a number outside [low, high] must be; NaN fails every comparison, so it is outside."""
    low, high = rule.low, rule.high
    if low is not None and not (low < value if rule.low_open else low <= value):
        return rule.must or (f"be > {_bound(low)}" if rule.low_open else f"be at least {_bound(low)}")
    if high is not None and not (value < high if rule.high_open else value <= high):
        return rule.must or (f"be < {_bound(high)}" if rule.high_open else f"be at most {_bound(high)}")
    return None


def _bound(value: float) -> str:
    """1, 0.5, 10,000,000: whole numbers with thousands separators."""
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"
