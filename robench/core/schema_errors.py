"""Validation errors of robench's file schemas (pydantic) as one user-facing line.

Every file robench reads back under a schema (results files; checkpoint metadata) reports its
first bad field the same way: "FILE: field rows[3].top1: expected a number <= 1, got 5", with
"(and N more)" when there are several, so a user can find the field and fix it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from robench.errors import RobenchError

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

_EXPECTED = {  # pydantic error type -> what the field should have held (ctx filled in)
    "finite_number": "a finite number",
    "float_type": "a number", "float_parsing": "a number",
    "int_type": "a whole number", "int_from_float": "a whole number", "int_parsing": "a whole number",
    "string_type": "a string", "bool_type": "true or false", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
    "greater_than_equal": "a number >= {ge}", "greater_than": "a number > {gt}",
    "less_than_equal": "a number <= {le}", "less_than": "a number < {lt}",
    "too_short": "at least {min_length} item(s)", "too_long": "at most {max_length} item(s)",
    "literal_error": "{expected}", "string_too_short": "a non-empty string",
    "string_pattern_mismatch": "printable text (no control characters)",  # the schemas' one pattern (Name)
}
_SHOWN = 60  # characters of a bad value quoted in the message
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def field_path(loc: Sequence[str | int]) -> str:
    """("rows", 3, "top1") -> "rows[3].top1", as a JSON path reads; "" for the document itself."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.fullmatch(part):
            out += f".{part}" if out else part
        else:  # a key that is no plain name (spaces, quotes, a newline): quoted, as JSON writes it
            out += f"[{shown(part)}]"
    return out


def shown(value: Any) -> str:
    """A value as JSON text, cut short: what the message says the file held."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


def expected(error: ErrorDetails) -> str:
    """What one pydantic error says the field should hold, in robench's words."""
    if error["type"] == "missing":
        return "missing, and it is required"
    template = _EXPECTED.get(error["type"])
    if template is not None:
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in (error.get("ctx") or {}).items()}
        try:
            return "expected " + template.format(**ctx)
        except (KeyError, IndexError):
            pass
    message = str(error.get("msg", "is not valid"))
    if message.startswith("Value error, "):
        return message.removeprefix("Value error, ")
    return "expected " + message.removeprefix("Input should be ") if message.startswith("Input should be ") else message


def error_line(error: ErrorDetails) -> str:
    """"field rows[3].top1: expected a number <= 1, got 5" for one pydantic error."""
    loc = [p for p in error.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-"))]
    where = field_path(loc)
    got = "" if error["type"] == "missing" else f", got {shown(error.get('input'))}"
    return f"{'field ' + where if where else 'the document'}: {expected(error)}{got}"


def schema_error(name: str, error: ValidationError, fix: str = "") -> RobenchError:
    """A pydantic ValidationError as one RobenchError line: "NAME: field PATH: expected ..., got ... (and N more)".

    ``name`` is the file (or what holds the data); ``fix`` is appended after "; " to say how to
    repair it. Only the first error is spelled out: one line is the CLI's contract.
    """
    errors = error.errors(include_url=False)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    tail = f"; {fix}" if fix else ""
    line = f"{name}: {error_line(errors[0]) if errors else 'not valid'}{more}{tail}"
    return RobenchError(" ".join(line.splitlines()))
