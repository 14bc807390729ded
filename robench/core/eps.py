"""Eps values as people write them: 1/255 units (8), fractions (8/255, 0.3*255) and pixels (0.03px);
under the L2 threat model, the perturbation's L2 norm in [0, 1] pixels as written (0.5).

Light on purpose (no torch): the CLI checks --eps before it imports the attacks, and the attack
suite (robench.attacks.suite), the gate's rules and ``override`` read eps through the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from robench.errors import FieldError, RobenchError

MAX_EPS = 255.0


def _number(text: str) -> Fraction:
    """"0.3", "76.5/255" or "0.3*255" as an exact fraction (no eval: one operator at most)."""
    for op in ("/", "*"):
        if op in text:
            a, b = text.split(op, 1)
            return Fraction(a.strip()) / Fraction(b.strip()) if op == "/" else Fraction(a.strip()) * Fraction(b.strip())
    return Fraction(text)


def parse_eps(value: Any, where: str = "eps", unit: str = "1/255", unit_option: str | None = None) -> float:
    """One eps in 1/255 units from a number (1/255 units, or pixels with ``unit`` "pixel"), "8/255", "0.3*255"
    or "0.03px" (a pixel fraction). ``unit_option`` names the option that makes plain numbers pixels, for hints.

    A plain number between 0 and 1 in 1/255 units is refused: it is the MNIST/CIFAR habit of
    writing eps in pixels (0.3, 0.031), and read as 1/255 units it would attack 255 times too weakly.
    Raises RobenchError naming ``where``.
    """
    if isinstance(value, bool):
        raise RobenchError(f"{where}: eps must be a number, got {value!r}")
    text = str(value).strip()
    pixel = unit == "pixel" or text.lower().endswith("px")
    text = text[:-2].strip() if text.lower().endswith("px") else text
    try:
        number = _number(text)  # exact: "nan" and "inf" are not numbers to Fraction
        float(number)  # a fraction beyond any float (1e400) overflows here
    except OverflowError:
        raise RobenchError(f"{where}: eps {value!s:.40} is out of range; it must lie in [0, 255] (1/255 units)") \
            from None
    except (ValueError, ZeroDivisionError):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:30]}... ({len(str(value))} characters)"
        raise RobenchError(
            f"{where}: eps {shown} is not a number; use 1/255 units like 8, a fraction like 8/255, "
            f"or pixels like 0.03px"
        ) from None
    written = "/" in text or "*" in text
    if not pixel and not written and 0 < number < 1:
        pixels = float(number) / 255
        raise RobenchError(
            f"{where}: eps {text} is in 1/255 units, i.e. {pixels:.2g} in pixels. Did you mean {text} in pixels? "
            f"Write {float(number * 255):g} or {text}*255 or {float(number * 255):g}/255 (or {text}px"
            f"{f', or {unit_option} pixel' if unit_option else ''})"
        )
    eps = float(number * 255) if pixel or "/" in text else float(number)
    if pixel and "/" not in text and not 0 <= number <= 1:
        raise RobenchError(f"{where}: eps {text} in pixels is {float(number * 255):g}/255; an eps in pixels must lie "
                           f"in [0, 1]")
    if not 0 <= eps <= MAX_EPS:
        raise RobenchError(f"{where}: eps {value!r} is out of range; it must lie in [0, 255] (1/255 units)")
    return eps


def parse_eps_list(text: str, field: str = "eps", unit: str = "1/255") -> tuple[float, ...]:
    """A comma-separated eps list such as "2,4,8", "8/255,16/255" or, with ``unit`` "pixel", "0.01,0.03".

    Raises FieldError naming ``field`` (the CLI names its option), and ``eps_unit`` in the unit trap's hint.
    """
    return eps_values(split_eps(text, field), field, unit)


def split_eps(text: str, field: str = "eps") -> tuple[str, ...]:
    """The items of a comma-separated eps list, as written (one trailing comma allowed, no empty item)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and not parts[-1]:  # one trailing comma, as lists are often written
        parts.pop()
    if not any(parts):
        raise FieldError(field, "{name}: give at least one eps, e.g. {name} 2,4,8")
    if not all(parts):  # "8,,16" once ran at 8 and 16 without a word: a lost value is a typo to fix
        raise FieldError(field, f"{{name}}: {text!r} has an empty item; give eps separated by single commas, "
                                f"e.g. 2,4,8")
    return tuple(parts)


def eps_values(values: tuple[Any, ...], field: str = "eps", unit: str = "1/255") -> tuple[float, ...]:
    """Each eps (a number or its text, as parse_eps reads it) in 1/255 units, each once.

    The one rule for an eps list from the command line or from code: a plain 0.5 is the unit trap
    in both. Raises FieldError naming ``field``, and ``eps_unit`` in the unit trap's hint.
    """
    try:
        eps = [parse_eps(v, "{name}", unit, "{eps_unit}" if field == "eps" else None) for v in values]
        return unique_eps(list(values), eps, "{name}")
    except RobenchError as e:
        raise FieldError(field, str(e), "eps_unit") from None


def unique_eps(written: list[Any], eps: list[float], where: str, unit: str = "in 1/255 units") -> tuple[float, ...]:
    """The parsed eps list, refusing a value given twice (``written``: as the user wrote each one).

    Equal means equal in 1/255 units, so 8 and 8/255 are one eps: a repeat would do the work
    twice and write duplicate rows, which a gate would then count as fewer checks.
    Raises RobenchError naming ``where``.
    """
    first: dict[float, Any] = {}
    for text, e in zip(written, eps, strict=True):
        if e in first:
            same = "" if str(first[e]).strip() == str(text).strip() else \
                f" ({str(first[e]).strip()} and {str(text).strip()} are both {e:g} {unit})"
            raise RobenchError(f"{where}: eps {e:g} is given twice{same}; give each eps once")
        first[e] = text
    return tuple(eps)


L2_UNIT = "the L2 norm of the whole perturbation in [0, 1] pixels"  # how an L2 eps reads, for messages


def parse_l2_eps(value: Any, where: str = "eps") -> float:
    """One L2 eps as written: a plain non-negative number (0.5), the perturbation's L2 norm in [0, 1] pixels.

    No /255 and no unit conversion (RobustBench writes CIFAR-10's L2 eps as 0.5), so the forms
    that convert under L-infinity ("8/255", "0.3*255", "0.03px") are refused rather than guessed at.
    Raises RobenchError naming ``where``.
    """
    text = str(value).strip()
    how = f"under norm l2 eps is {L2_UNIT}, written as a plain number such as 0.5 (no /255)"
    if isinstance(value, bool) or any(c in text for c in "/*") or text.lower().endswith("px"):
        raise RobenchError(f"{where}: eps {text!r} is not a plain number; {how}")
    try:
        number = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise RobenchError(f"{where}: eps {text[:40]!r} is not a number; {how}") from None
    if not 0 <= number <= MAX_EPS:
        raise RobenchError(f"{where}: eps {text} is out of range; {how}, at least 0 (and at most the data's "
                           f"L2 diameter, sqrt(channels x height x width))")
    return float(number)


def l2_eps_list(values: Sequence[Any], where: str) -> tuple[float, ...]:
    """Each L2 eps as written (parse_l2_eps), each once; raises RobenchError naming ``where``."""
    return unique_eps(list(values), [parse_l2_eps(v, where) for v in values], where, "as L2 norms")


def l2_eps_values(values: tuple[Any, ...], field: str = "eps") -> tuple[float, ...]:
    """Each L2 eps (parse_l2_eps), each once; raises FieldError naming ``field``."""
    try:
        return l2_eps_list(values, "{name}")
    except RobenchError as e:
        raise FieldError(field, str(e)) from None
