"""The tokenizer package's layers: the reading order its docstring gives is the order of its imports, and the one word
cache every model uses is bounded."""
import ast
import re

import nanollm.tokenizer
from nanollm.tokenizer import bpe
from nanollm.tokenizer.bpe import WordCache
from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "nanollm" / "tokenizer"


def modules() -> dict[str, ast.Module]:
    """Every module of the package, parsed: "errors" -> its syntax tree."""
    return {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in PACKAGE.glob("*.py")}


def reading_order() -> list[str]:
    """The module names the package docstring lists, in its order: "    errors.py   TokenizerError, ..." -> "errors"."""
    return re.findall(r"^ {4}(\w+)\.py ", nanollm.tokenizer.__doc__, flags=re.MULTILINE)


def package_imports(tree: ast.Module) -> list[tuple[str, ast.stmt]]:
    """(module of this package, import statement) for every import of one, wherever it sits in the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import y / from . import x
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found += [(name.split(".")[0], node) for name in names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nanollm.tokenizer."):
            found.append((node.module.split(".")[2], node))
    return found


def test_reading_order_lists_every_module_once():
    assert sorted(reading_order()) == sorted(modules().keys() - {"__init__"})


def test_each_module_imports_only_modules_above_it_in_the_reading_order():
    """No cycle can hide behind an import inside a function: every import of the package's own modules counts."""
    order, trees = reading_order(), modules()
    for position, name in enumerate(order):
        for imported, node in package_imports(trees[name]):
            assert imported in order[:position], f"{name}.py:{node.lineno} imports {imported}, listed after it"


def test_no_module_imports_inside_a_function():
    """Imports sit at the top of each file, where a reader sees what the module stands on."""
    for name, tree in modules().items():
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{name}.py:{inner[0].lineno} imports inside {function.name}"


def test_json_is_parsed_in_one_place():
    """errors.read_json_object is the package's one JSON reader: no other module calls json.load or json.loads."""
    parsing = {name for name, tree in modules().items() if any(
        isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "json"
        and node.attr in ("load", "loads") for node in ast.walk(tree))}
    assert parsing == {"errors"}


def test_word_cache_merges_each_word_once_and_empties_when_full(monkeypatch):
    """With room for two words: "a", "b" are merged and kept; "a" again is a hit; "c" finds the cache full, so it
    empties it and starts over with "c" alone; "a" then has to be merged again."""
    monkeypatch.setattr(bpe, "WORD_CACHE_LIMIT", 2)
    merged = []
    cache = WordCache(lambda word: merged.append(word) or (ord(word),))
    assert [cache[word] for word in "abac"] == [(97,), (98,), (97,), (99,)]
    assert merged == ["a", "b", "c"] and dict(cache) == {"c": (99,)}
    assert cache["a"] == (97,) and merged[-1] == "a"
