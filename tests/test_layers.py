"""The layers hold: the library never reaches up into the application, its packages import only the
packages below them, and no modules import each other.

Every import of every module under src/duolm is read from its syntax tree, at the top of a file and
inside functions alike, so a lazy import cannot hide an edge. The rules (duolm/app/__init__.py):
- a library module (anything outside duolm.app) never imports duolm.app, omegaconf or hydra;
- inside the library, a package imports only itself and the packages of a lower rank (LAYERS): the
  math (duolm.core) below the networks and the data, those below checkpoints and sampling, those
  below evaluation and training, and all of it below duolm.app;
- the module graph (edges between duolm modules) has no cycle.
duolm/__init__.py and duolm/__main__.py are the package's doors to both layers and are exempt
from the first rule (duolm.load and `python -m duolm` reach the application through them).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "duolm"
DOORS = {"duolm", "duolm.__main__"}
CONFIG_LIBRARIES = ("omegaconf", "hydra")
# the library's packages by rank: a module imports only its own package and packages of a lower rank
# (two packages of one rank never import each other: the networks know nothing of the data, sampling
# nothing of checkpoint formats, evaluation nothing of training)
LAYERS = {
    "duolm.errors": 0,                        # the library's errors in its own terms
    "duolm.contracts": 1, "duolm.io": 1,      # the written contracts; files, the Hub, progress lines
    "duolm.core": 2,                          # the math
    "duolm.models": 3, "duolm.data": 3,       # networks; corpora, tokenizers, the token store
    "duolm.checkpoints": 4, "duolm.sampling": 4,
    "duolm.rl": 5,                            # policy gradients: log-probabilities, groups, GRPO updates
    "duolm.evaluation": 6, "duolm.training": 6,  # (RL's accuracy check and its Lightning module read duolm.rl)
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for every import statement of a file. `from a import b`
    counts as an import of a.b when a.b is a module (a submodule import), else of a."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node, inside):
        for child in ast.iter_child_nodes(node):
            nested = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inside, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if _is_module(sub) else base, inside, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def _is_module(name: str) -> bool:
    if not name.startswith("duolm."):
        return False
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    """duolm module -> the duolm modules it imports (an import of a package counts as its __init__)."""
    mods = modules()
    out = {}
    for name, path in mods.items():
        out[name] = {target for target, _, _ in imports(path)
                     if target.split(".")[0] == "duolm" and target in mods and target != name}
    return out


def is_library(name: str) -> bool:
    return name not in DOORS and not (name == "duolm.app" or name.startswith("duolm.app."))


def test_the_library_never_imports_the_application_or_its_config():
    bad = []
    for name, path in modules().items():
        if not is_library(name):
            continue
        for target, inside, line in imports(path):
            root = target.split(".")[0]
            if target == "duolm.app" or target.startswith("duolm.app.") or root in CONFIG_LIBRARIES:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not bad, "library modules reach up into the application:\n" + "\n".join(bad)


def layer_of(name: str) -> str | None:
    """The LAYERS package a library module belongs to (None: the doors, the application)."""
    return next((p for p in LAYERS if name == p or name.startswith(p + ".")), None)


def test_every_library_module_belongs_to_a_layer():
    stray = [name for name in modules() if is_library(name) and layer_of(name) is None]
    assert not stray, f"modules outside every layer of tests/test_layers.py LAYERS: {stray}"


def test_the_library_imports_only_downwards():
    bad = []
    for name, targets in graph().items():
        own = layer_of(name)
        if own is None:
            continue
        for target in targets:
            other = layer_of(target)
            if other is None or (other != own and LAYERS[other] >= LAYERS[own]):
                bad.append(f"{name} (rank {LAYERS[own]}) imports {target} "
                           f"(rank {LAYERS.get(other, 'app')})")
    assert not bad, "imports that do not go down the layers:\n" + "\n".join(sorted(bad))


def test_the_order_check_sees_a_climb(monkeypatch):
    """A fake edge from the math up to sampling is reported."""
    edges = {"duolm.core.methods": {"duolm.sampling.blocks"}, "duolm.sampling.blocks": set()}
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: edges)
    with pytest.raises(AssertionError, match="duolm.core.methods .* imports duolm.sampling.blocks"):
        test_the_library_imports_only_downwards()


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state = {}  # 1: on the stack, 2: done
    stack = []

    def walk(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_no_two_modules_import_each_other():
    # a package importing its own submodules (duolm.sampling -> duolm.sampling.psi) is how a package
    # re-exports; a submodule importing its package's __init__ back would close a loop, and counts
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("edges,cyclic", [({"a": {"b"}, "b": {"a"}}, True), ({"a": {"b"}, "b": {"c"}}, False),
                                          ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"a"}}, True)])
def test_the_cycle_finder_finds_cycles(edges, cyclic):
    assert (find_cycle(edges) is not None) == cyclic


def test_the_reader_sees_imports_inside_functions(tmp_path, monkeypatch):
    """An import inside a function is an edge like any other (it cannot hide a climb)."""
    fake = tmp_path / "duolm"
    (fake / "sampling").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "sampling" / "__init__.py").write_text("")
    (fake / "sampling" / "x.py").write_text("def f():\n    from duolm.app import cli\n")
    (fake / "app").mkdir()
    (fake / "app" / "__init__.py").write_text("")
    (fake / "app" / "cli.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    found = imports(fake / "sampling" / "x.py")
    assert found == [("duolm.app.cli", True, 2)]
