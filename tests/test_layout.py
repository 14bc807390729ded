"""Layout: data flows one way (cli -> capabilities -> runspec -> engine -> attacks/models/data -> foundations).

Every import counts, function-level ones included; imports used only for type hints
(under ``if TYPE_CHECKING:``) do not. The README's "Layout" section lists the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (  # lowest first: a module may import its own layer's modules and those below, never above
    ("robench", "errors", "files", "cache", "stats", "report", "plots", "recipe", "passes", "preprocess",
     "schema_errors"),
    ("data", "checkpoint", "factories", "attacks.base", "attacks.single_step", "attacks.iterative", "attacks.fab",
     "attacks.apgd", "attacks.square", "attacks", "suite", "zoo", "models", "distributed", "resume", "metrics"),
    ("engine", "worst", "samples", "provenance", "results_schema", "health", "probes", "rules"),
    ("runspec", "results_file", "report_doc"),
    ("evaluate", "transfer", "leak", "train", "zoo_build", "gate", "gate_report"),
    ("cli", "__main__"),
)


def _modules() -> dict[str, Path]:
    """Module name (without the ``robench.`` prefix; ``cli`` for the front end) -> file."""
    out = {}
    for path in sorted((ROOT / "robench").rglob("*.py")):
        parts = path.relative_to(ROOT / "robench").with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "robench"] = path
    out["cli"] = ROOT / "cli"
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, less the bodies of ``if TYPE_CHECKING:`` blocks."""
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for stmt in node.body for n in ast.walk(stmt)}
    return [n for n in ast.walk(tree) if id(n) not in skip]


def _imports(path: Path, known: set[str]) -> set[str]:
    """The robench modules this file imports (``from robench.x import y`` counts as x, or x.y if a module)."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("robench"):
            base = node.module.removeprefix("robench").lstrip(".")
            names = [base or "robench", *(f"{base}.{a.name}" if base else a.name for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("robench").lstrip(".") or "robench" for a in node.names
                     if a.name.startswith("robench")]
        found |= {"cli" if n.startswith("cli") else n for n in names if n in known or n.startswith("cli")}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {name: _imports(path, known) - {name} for name, path in mods.items() if name != "cli"}
    graph["cli"] = set().union(*(_imports(p, known) for p in (ROOT / "cli").glob("*.py"))) - {"cli"}
    return graph


def _layer(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def test_every_module_has_a_layer() -> None:
    placed = {m for layer in LAYERS for m in layer}
    assert set(_graph()) - placed == set(), "give the new module a layer here and in the README's Layout"


def test_no_module_imports_one_above_it() -> None:
    upward = [(a, b) for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a)]
    assert upward == []


def test_no_import_cycle() -> None:
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
