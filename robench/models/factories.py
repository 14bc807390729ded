"""Factory specs: any PyTorch classifier, built by the user's own code.

``path/to/file.py:callable`` or ``package.module:callable`` (as in ``uvicorn app:main``). This
is the one place robench imports and runs user code, and only for a spec of this form: a
checkpoint's metadata never makes robench import anything.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from robench.errors import RobenchError

_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_NAME = re.compile(r"[A-Za-z_]\w*")


def is_factory(text: str) -> bool:
    """Is ``text`` a factory, ``FILE.py:CALLABLE`` or ``package.module:CALLABLE``?

    A timm name never holds a colon but for ``hf-hub:`` (not a module name), and ``zoo:``
    specs are read before this, so the form is unambiguous.
    """
    target, colon, name = text.rpartition(":")
    return bool(colon and _NAME.fullmatch(name) and (target.endswith(".py") or _MODULE.fullmatch(target))
                and target != "zoo")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _import_file(path: Path, spec: str) -> Any:
    """Run a .py file as a module of its own (its folder is importable while it runs)."""
    if not path.is_file():
        raise RobenchError(f"model spec '{spec}': file {path} not found; give FILE.py:CALLABLE with an existing file")
    name = f"robench_factory_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise RobenchError(f"model spec '{spec}': cannot import {path} as Python code")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by its name
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - user code raises anything, SystemExit included
        del sys.modules[name]
        if isinstance(e, KeyboardInterrupt):
            raise
        raise RobenchError(f"model spec '{spec}': importing {path} failed: {_first_line(e)}") from None
    finally:
        sys.path.remove(folder)
    return module


def _import_module(target: str, spec: str) -> Any:
    """Import ``package.module``, from the working folder too (as uvicorn and ``python -m`` do)."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(target)
    except BaseException as e:  # noqa: BLE001 - user code raises anything, SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        hint = "; is it installed or on PYTHONPATH?" if isinstance(e, ModuleNotFoundError) else ""
        raise RobenchError(f"model spec '{spec}': cannot import module {target} ({_first_line(e)}){hint}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def find(text: str) -> Callable[..., Any]:
    """The callable a factory text names, imported; a RobenchError names what is missing."""
    target, _, name = text.rpartition(":")
    module = _import_file(Path(target), text) if target.endswith(".py") else _import_module(target, text)
    where = target
    factory = getattr(module, name, None)
    if factory is None:
        public = [n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                  and not inspect.ismodule(v)]
        close = difflib.get_close_matches(name, public, n=1)
        listed = ", ".join(public[:8]) + (", ..." if len(public) > 8 else "")
        hint = f"did you mean {close[0]}?" if close else f"its callables: {listed or 'none'}"
        raise RobenchError(f"model spec '{text}': {where} has no '{name}'; {hint}")
    if not callable(factory):
        raise RobenchError(f"model spec '{text}': {where}:{name} is a {type(factory).__name__}, not a callable "
                           f"returning a torch.nn.Module")
    return factory


def source_file(text: str) -> Path | None:
    """The file a factory text's module is read from (``FILE.py`` itself, or the module's ``__file__``)."""
    target = text.rpartition(":")[0]
    if target.endswith(".py"):
        return Path(target)
    found = getattr(_import_module(target, text), "__file__", None)  # imported already: sys.modules holds it
    return Path(found) if found and Path(found).is_file() else None


def takes_num_classes(factory: Callable[..., Any]) -> bool:
    """Does the callable accept ``num_classes=`` (by name, or through ``**kwargs``)?"""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        return False
    return any(p.name == "num_classes" and p.kind is not p.POSITIONAL_ONLY or p.kind is p.VAR_KEYWORD
               for p in params)


def build(text: str, num_classes: int | None) -> nn.Module:
    """Call the factory (with ``num_classes=`` when it takes it and one is given); check it gives a module."""
    factory = find(text)
    kwargs = {"num_classes": num_classes} if num_classes is not None and takes_num_classes(factory) else {}
    call = f"{text.rpartition(':')[2]}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        model = factory(**kwargs)
    except BaseException as e:  # noqa: BLE001 - user code raises anything, SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        raise RobenchError(f"model spec '{text}': {call} raised {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise RobenchError(f"model spec '{text}': {call} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
