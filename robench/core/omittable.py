"""``Omittable[X]``: a field of a file schema (pydantic) that a file may leave out but never set to null.

Readers take a field's absence for a default and its null for a value, so the two must stay
apart. pydantic validates against ``X`` alone: null is refused, and the JSON Schema says ``X``
without a null. A left-out field holds its default None (pydantic never validates defaults),
which is what the type checker is told: ``X | None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:
    Omittable: TypeAlias = T | None
else:
    class Omittable:
        """At run time ``Omittable[X]`` is ``X`` itself, the type pydantic validates and documents."""

        def __class_getitem__(cls, item: Any) -> Any:
            return item
