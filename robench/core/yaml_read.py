"""Hand-written YAML (suites, gate rules) read safely, with the line of every mapping and key for messages."""

from __future__ import annotations

import math
from typing import Any

import yaml

from robench.core.fields import Rules, check
from robench.errors import FieldError, RobenchError


class _Mapping(dict):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int = 0
    key_lines: dict[str, int]


MAX_YAML_CHARS = 1 << 20  # robench's own YAML files are a few KiB; a megabyte is surely not a suite or rule file


MAX_YAML_INT = 2**63 - 1  # the largest whole number torch and numpy hold; no count or bound of robench's is near it


class _Refused(yaml.constructor.ConstructorError):
    """A well-formed YAML value robench refuses (an alias, a non-finite or overlong number): not 'invalid YAML'."""


class _LineLoader(yaml.SafeLoader):
    """SafeLoader (no object construction) that keeps line numbers for messages and refuses aliases.

    An alias (``*name``) repeats a node by reference, so a few lines of them can stand for billions of
    values (the "billion laughs"); robench's files never need one, so none is read.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(None, None, f"alias '*{event.anchor}' refused: robench's YAML files take no anchors or "
                                       f"aliases; write the value out", event.start_mark)
        return super().compose_node(parent, index)


def _number_problem(loader: _LineLoader, node: yaml.ScalarNode) -> str | None:
    """Why a YAML number cannot be one of robench's values (non-finite, or too long a whole number), else None."""
    kind = {"tag:yaml.org,2002:int": "int", "tag:yaml.org,2002:float": "float"}.get(node.tag)
    if kind is None:  # not a number; a local tag such as "!0" has no ":" at all
        return None
    text = node.value if len(node.value) <= 24 else f"{node.value[:20]}... ({len(node.value)} characters)"
    try:
        value = getattr(yaml.SafeLoader, f"construct_yaml_{kind}")(loader, node)
    except ValueError:  # Python refuses to read whole numbers of more than 4300 digits
        value = MAX_YAML_INT + 1
    if isinstance(value, float) and not math.isfinite(value):
        return f"{text} is not a finite number; expected a number such as 0.5 (.nan, .inf and numbers beyond " \
               f"1.8e308 are refused)"
    if isinstance(value, int) and abs(value) > MAX_YAML_INT:
        return f"{text} is too large; expected a whole number of at most 2**63 - 1"
    return None


def _check_numbers(loader: _LineLoader, key: str, node: yaml.Node) -> None:
    """Refuse a non-finite or overlong number under ``key`` (in lists too), naming the key and its line."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_numbers(loader, key, item)
    elif isinstance(node, yaml.ScalarNode):
        problem = _number_problem(loader, node)
        if problem is not None:
            raise _Refused(None, None, f"'{key}': {problem}", node.start_mark)


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Any:
    data = _Mapping()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    for k, v in node.value:  # YAML would silently keep the last of two equal keys
        key = str(k.value)
        if key in data.key_lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first at line {data.key_lines[key]})", k.start_mark
            )
        data.key_lines[key] = k.start_mark.line + 1
        _check_numbers(loader, key, v)
    yield data
    data.update(loader.construct_mapping(node))


def _construct_number(loader: _LineLoader, node: yaml.ScalarNode) -> Any:
    """A number anywhere else (a bare list's item): refused as in a mapping, without a key to name."""
    problem = _number_problem(loader, node)
    if problem is not None:
        raise _Refused(None, None, problem, node.start_mark)
    return getattr(yaml.SafeLoader, f"construct_yaml_{node.tag.rsplit(':', 1)[1]}")(loader, node)

_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_number)
_LineLoader.add_constructor("tag:yaml.org,2002:float", _construct_number)


def locate(source: str, node: Any, key: str | None = None) -> str:
    """"FILE line N" for a mapping read by ``read_yaml`` (the line of ``key`` when given)."""
    line = node.key_lines.get(key, node.line) if isinstance(node, _Mapping) and key else getattr(node, "line", 0)
    return f"{source} line {line}" if line else source


def check_node(node: Any, rules: Rules, source: str) -> None:
    """``robench.core.fields.check`` on a mapping ``read_yaml`` read: an error names the file, line and key."""
    try:
        check(node, rules)
    except FieldError as e:
        raise RobenchError(f"{locate(source, node, e.field)}: {e.named(repr(e.field))}") from None


def read_yaml(text: str, source: str = "<string>") -> Any:
    """Parse hand-written YAML safely; mappings remember their lines for ``locate``.

    Duplicate keys, syntax errors, aliases, non-finite numbers and whole numbers beyond 2**63 - 1
    are errors naming the file and line (and the key); a text over ``MAX_YAML_CHARS`` is refused before parsing;
    nesting too deep for the parser is one naming the file.
    """
    if len(text) > MAX_YAML_CHARS:
        raise RobenchError(f"{source}: {len(text)} characters is too long for a suite or rule file (at most "
                           f"{MAX_YAML_CHARS}); is it the right file?")
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RobenchError(f"{source}{line}: {'' if isinstance(e, _Refused) else 'invalid YAML: '}{problem}") from None
    except RecursionError:
        raise RobenchError(f"{source}: invalid YAML: nested too deep; a suite or gates file is a few levels "
                           f"deep") from None
