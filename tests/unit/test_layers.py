"""Imports run one way, from the commands down to the errors: every import of a trainyard module, at module
level or inside a function, goes to the same layer or a lower one, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# lowest first; a module may import its own layer and the ones before it
LAYERS = [
    "errors",
    "files",
    "extras",
    "devices",
    "config",
    "registry",
    "tasks",
    "data",
    "models",
    "track",
    "parallel",
    "engine",
    "tools",
    "doctor",
    "runs",
    "commands",
    "cli",
    "__main__",
]


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "trainyard").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every trainyard module ``path`` imports (``from a.b import c`` counts a.b.c when c is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trainyard" and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "trainyard")
    return out


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_import_goes_down_the_layers():
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        mine = layer(name)
        if mine is None:  # the package's own __init__: the Python API's lazy front door
            continue
        for target in sorted(imports(path, known)):
            theirs = layer(target)
            if theirs is not None and theirs > mine:
                wrong.append(f"{name} imports {target} ({LAYERS[mine]} -> {LAYERS[theirs]})")
    assert not wrong, "imports going up the layers:\n" + "\n".join(wrong)


def test_no_two_modules_import_each_other():
    known = modules()
    graph = {name: {t for t in imports(path, known) if t in known and t != name} for name, path in known.items()}
    # a package __init__ may re-export its own submodules; the cycle that matters is between distinct modules
    cycles = sorted(
        {
            tuple(sorted((a, b)))
            for a, targets in graph.items()
            for b in targets
            if a in graph.get(b, ()) and not (a.startswith(b + ".") or b.startswith(a + "."))
        }
    )
    assert not cycles, f"modules importing each other: {cycles}"


def test_every_module_sits_in_a_layer():
    stray = [name for name in modules() if name != "trainyard" and layer(name) is None]
    assert not stray, f"modules outside the layers (add them to LAYERS in order): {stray}"
