"""A model's identity: which code computes it, recorded beside its weights hash.

Equal state dicts do not make equal functions: ``efficientnet_b0`` and ``tf_efficientnet_b0``
take the same keys and pad differently, two factories in one file may share parameters, and a
factory file may be fixed between two runs. Resume states and the example cache key on the
identity as well as on the weights, and results record it.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from torch import nn

from robench.models import factories


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def class_source(cls: type) -> Path | None:
    """The source file that defines ``cls``, or None where inspect finds none (built-ins, C extensions, a REPL)."""
    try:
        found = inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None
    path = Path(found) if found else None
    return path if path is not None and path.is_file() else None


def module_identity(model: nn.Module) -> dict[str, Any]:
    """A user's module: its class's qualified name and a SHA-256 of the file defining it (None if none is found).

    The class's module name is left out: robench imports a factory file under a name derived
    from its absolute path, which would make one file's models differ between folders.
    """
    cls = type(model)
    source = class_source(cls)
    return {"class": cls.__qualname__, "class_source_sha256": file_sha256(source) if source else None}


def model_identity(arch: str, model: nn.Module) -> dict[str, Any]:
    """The architecture (a timm name or ``FILE.py:CALLABLE``) and, for a factory, the SHA-256 of its file.

    A factory's model is the user's code, so its class and that class's file count too (a factory
    may build a class defined in another file). A timm model's code is timm's, whose version the
    resume fingerprint records; its name says which of timm's models it is.
    """
    if not factories.is_factory(arch):
        return {"arch": arch}
    source = factories.source_file(arch)
    return {"arch": arch, "source_sha256": file_sha256(source) if source else None, **module_identity(model)}
