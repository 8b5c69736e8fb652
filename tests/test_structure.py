"""The shape of the code, checked: no import cycles, imports at the top, modules a reader can take in.

The import graph is read from the source with `ast` (every import, including those inside functions): an import of
`a.b` is an edge to the module a/b.py, or to a/b/__init__.py for a package; `from a import b` is an edge to a/b.py
when b is a module of package a, else to a itself. The repository's kernels/ folder is installed as nanollm.kernels
(setup.py), and read under that name here.
"""
import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGES = {"nanollm": PROJECT_ROOT / "nanollm", "weights_tools": PROJECT_ROOT / "weights_tools",
            "nanollm.kernels": PROJECT_ROOT / "kernels"}
# The only imports of project modules allowed inside a function: each for an optional dependency (CuPy).
OPTIONAL = {("nanollm.backends", "nanollm.backends.cupy_backend")}
# What weights_tools may take from nanollm: the data it fills (config, weights), the helpers every file reader uses
# (files, memory), the RoPE frequencies it checks a config by, the cache size it reports, and the tokenizer the
# demo model's training script trains and encodes its corpus with.
WEIGHTS_TOOLS_MAY_USE = {"nanollm.config", "nanollm.weights", "nanollm.files", "nanollm.memory", "nanollm.rope",
                         "nanollm.kv_cache", "nanollm.tokenizer", "nanollm.tokenizer.train"}


def modules() -> dict[str, Path]:
    """Every project module by dotted name -> its file."""
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def target(name: str) -> str | None:
    """The project module an imported name stands for (the longest known prefix), or None outside the project."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str) -> list[tuple[str, bool, int]]:
    """(imported project module, whether the import is inside a function, line) for every import in module `name`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for imported in names:
            module = target(imported)
            if module is not None and module != name:
                found.append((module, id(node) in inside, node.lineno))
    return found


GRAPH = {name: imports(name) for name in MODULES}


def test_no_import_cycle():
    """Depth-first search over every import, including those inside functions: any back edge is a cycle."""
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for module, _, _ in GRAPH[name]:
            if state.get(module) == "open":
                cycles.append(path[path.index(module):] + [module])
            elif module not in state:
                visit(module, path + [module])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_are_for_optional_dependencies_only():
    lazy = [(name, module, line) for name, edges in GRAPH.items() for module, inside, line in edges if inside]
    assert len(lazy) <= 4 and {(name, module) for name, module, _ in lazy} <= OPTIONAL, lazy


def test_weights_tools_reaches_into_nanollm_only_for_what_it_fills_and_uses():
    used = {module for name, edges in GRAPH.items() if name.startswith("weights_tools")
            for module, _, _ in edges if module.startswith("nanollm")}
    assert used <= WEIGHTS_TOOLS_MAY_USE, used - WEIGHTS_TOOLS_MAY_USE


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("nanollm") and
                                        not n.startswith("nanollm.kernels")))
def test_no_module_of_nanollm_is_over_400_lines(name):
    assert len(MODULES[name].read_text(encoding="utf-8").splitlines()) <= 400


def test_the_decode_loop_is_within_the_first_120_lines_of_generation():
    """A reader opening generation.py meets the loop (prefill, then one decode step per token) at once."""
    source = MODULES["nanollm.generation"].read_text(encoding="utf-8").splitlines()
    loop = next(i for i, line in enumerate(source, start=1) if "while self.running:" in line)
    decode = next(i for i, line in enumerate(source, start=1) if "def decode(self)" in line)
    assert loop <= decode <= 120, (loop, decode)
