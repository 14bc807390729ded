"""Layout: data flows one way, and the folders are the layers.

A module's layer is its folder's (``robench/engine/runner.py`` is in ``engine``), so a new file
inherits its layer. Every import counts: function-level ones, and those under
``if TYPE_CHECKING:`` too, so that not even a type-level cycle can form.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (  # lowest first: a module may import its own layer and those below, never above
    ("robench", "errors", "core"),
    ("data",),
    ("models",),
    ("attacks",),
    ("engine",),
    ("analysis", "results"),
    ("run",),
    ("train", "gate"),
    ("render",),
    ("cli", "__main__"),
)
TOP_LEVEL = {"__init__", "__main__", "errors"}  # the only modules beside the folders
DEPRECATED = {"evaluate", "runspec", "suite", "preprocess"}  # old paths the README promised; go next release


def _modules() -> dict[str, Path]:
    """Module name (without ``robench.``; ``cli`` for the front end) -> file."""
    out = {}
    for path in sorted((ROOT / "robench").rglob("*.py")):
        parts = path.relative_to(ROOT / "robench").with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "robench"] = path
    out["cli"] = ROOT / "cli"
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """The robench modules this file imports (``from robench.x import y`` counts as x.y if a module, else x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("robench"):
            base = node.module.removeprefix("robench").lstrip(".")
            subs = [f"{base}.{a.name}" if base else a.name for a in node.names]
            names = [n if n in known else base or "robench" for n in subs]  # a submodule, else the module itself
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("robench").lstrip(".") or "robench" for a in node.names
                     if a.name.startswith("robench")]
        found |= {"cli" if n.startswith("cli") else n for n in names if n in known or n.startswith("cli")}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {name: _imports(path, known) - {name} for name, path in mods.items()
             if name not in ("cli", "robench") and name not in DEPRECATED}
    graph["robench"] = set()  # the facade: its API is imported on first use (test_the_lazy_api_is_the_typed_api)
    graph["cli"] = set().union(*(_imports(p, known) for p in (ROOT / "cli").glob("*.py"))) - {"cli"}
    return graph


def _layer(name: str) -> int:
    folder = name.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if folder in layer)


def test_every_module_is_in_a_layer_folder() -> None:
    top = {p.stem for p in (ROOT / "robench").glob("*.py")}
    assert top - TOP_LEVEL - DEPRECATED == set(), "put the new module in the folder of its layer"
    folders = {p.name for p in (ROOT / "robench").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    placed = {f for layer in LAYERS for f in layer}
    assert folders - placed == set(), "give the new folder a layer here and in docs/design.md"


def test_no_module_imports_one_above_it() -> None:
    upward = [(a, b) for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a)]
    assert upward == []


def test_render_is_imported_only_by_the_cli() -> None:
    users = {a for a, deps in _graph().items() for b in deps if b.startswith("render") and not a.startswith("render")}
    assert users <= {"cli"}


def test_no_import_cycle_even_for_type_hints() -> None:
    graph, state = _graph(), {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join((*path, node, dep))}"
            if dep not in state:
                visit(dep, (*path, node))
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, ())


def test_the_cycle_check_sees_type_checking_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from robench.engine import Outcomes\n")
    assert _imports(src, {"engine"}) == {"engine"}


@pytest.mark.parametrize(("package", "extra"), [("robench", {"__version__"}), ("robench.models", set())])
def test_the_lazy_api_is_the_typed_api(package: str, extra: set[str]) -> None:
    """A lazy facade names each API entry three times (lazy map, __all__, TYPE_CHECKING): they agree and resolve."""
    facade = importlib.import_module(package)
    tree = ast.parse(Path(facade.__file__).read_text(encoding="utf-8"))
    typed = {(node.module, a.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and (node.module or "").startswith("robench") for a in node.names}
    assert typed == {(module, name) for name, module in facade._API.items()}
    assert set(facade.__all__) == {*extra, *facade._API}
    for name in facade._API:
        assert getattr(facade, name).__name__ == name


def test_no_api_name_is_also_a_module() -> None:
    """``robench.train`` cannot be a function and a package: importing the package would replace the function."""
    import robench

    modules = {p.stem for p in (ROOT / "robench").glob("*.py")} | {p.name for p in (ROOT / "robench").iterdir()
                                                                    if (p / "__init__.py").exists()}
    assert set(robench._API) & modules == set()
