"""The shape of the code, checked: rooms of a readable size, no import circles, one place for
a frame's byte address and one atomic replace."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("common", "precompute", "train")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the packages: dotted name -> (file, is a package's __init__)."""
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = p.relative_to(ROOT).with_suffix("").parts
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _trees() -> dict[str, ast.Module]:
    return {name: ast.parse(p.read_text()) for name, (p, _) in MODULES.items()}


def _closest(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, tree: ast.Module) -> set[str]:
    """The project's modules that ``name`` imports anywhere (in functions too), each resolved to
    the most specific module: ``from . import x`` is the submodule ``x`` when there is one."""
    is_pkg = MODULES[name][1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {m for a in node.names if (m := _closest(a.name))}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                full = f"{mod}.{a.name}"
                found = full if full in MODULES else _closest(mod)
                if found:
                    out.add(found)
    out.discard(name)
    return out


def test_no_module_over_500_lines_and_no_function_over_80():
    long = []
    for name, tree in _trees().items():
        n = len(MODULES[name][0].read_text().splitlines())
        if n > 500:
            long.append(f"{name}: {n} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > 80:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert not long, long


def test_no_import_circle_counting_imports_inside_functions():
    graph = {name: imports_of(name, tree) for name, tree in _trees().items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(v: str, path: list[str]) -> list[str] | None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return [*path[path.index(w) :], w] if w in path else [v, w]
            if w not in state:
                found = visit(w, [*path, w])
                if found:
                    return found
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            cycle = visit(v, [v])
            assert cycle is None, " -> ".join(cycle)


def test_the_import_graph_sees_a_circle_when_there_is_one():
    # the checker itself: two modules importing each other inside functions form a circle
    a = ast.parse("def f():\n    from train import loop\n")
    assert "train.loop" in imports_of("train.evaluate", a)
    b = ast.parse("from .tasks import registry\nfrom . import step\n")
    assert imports_of("train.loop", b) == {"train.tasks.registry", "train.step"}


def test_precompute_never_imports_train_nor_train_precompute():
    for name, tree in _trees().items():
        deps = imports_of(name, tree)
        other = {"precompute": "train", "train": "precompute"}.get(name.split(".")[0])
        assert not [d for d in deps if d.split(".")[0] == other], name


# a product of something with a frame's or row's size in bytes, added to an offset
_ADDRESS = re.compile(r"\+\s*(\([^()]*\)|[\w.\[\]()]+)\s*\*\s*[\w.]*(frame_bytes|row_bytes|\bfb\b)")


def test_the_byte_address_formula_is_written_once():
    found = []
    for name, (p, _) in MODULES.items():
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if _ADDRESS.search(line):
                found.append(f"{name}:{i}: {line.strip()}")
    assert len(found) == 1 and found[0].startswith("common.store.format:"), found


def test_one_atomic_replace_for_every_writer():
    """Only common.fileio renames a file over another (os.replace, os.rename, Path.replace/
    rename): every writer goes through its replace_file."""
    found = []
    for name, tree in _trees().items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            f = node.func
            on_os = isinstance(f.value, ast.Name) and f.value.id == "os"
            of_dataclasses = isinstance(f.value, ast.Name) and f.value.id == "dataclasses"
            one_arg = (on_os or len(node.args) == 1) and not of_dataclasses  # not str.replace
            if f.attr in ("replace", "rename") and one_arg:
                found.append(f"{name}:{node.lineno}")
    assert found and all(f.startswith("common.fileio:") for f in found), found
    assert len(found) == 1, found


def test_the_data_package_never_imports_the_loop_evaluation_or_tasks():
    """train/data/ is the data side: what it reads never depends on how a run trains,
    evaluates or scores (imports inside functions counted)."""
    trees = _trees()
    found = []
    for name, tree in trees.items():
        if name == "train.data" or name.startswith("train.data."):
            for dep in imports_of(name, tree):
                if dep in ("train.loop", "train.evaluate") or dep.startswith("train.tasks"):
                    found.append(f"{name} imports {dep}")
    assert not found, found


def test_no_constructor_takes_more_than_12_keyword_parameters():
    """Settings travel as one object (train.data.DataSettings), not re-spelled as keyword
    arguments; StoreDataModule's keyword constructor takes them all as ``**settings``."""
    long = []
    for name, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                a = node.args
                n = len(a.args) - 1 + len(a.kwonlyargs)  # self left out; *args/**kw not named
                if n > 12:
                    long.append(f"{name}.__init__: {n} parameters")
    assert not long, long


def test_docs_and_code_name_no_path_outside_the_repository():
    """What users get is the repository: no doc, benchmark or module points a reader at a
    script beside it (``../shared``) or at a scratch folder (``/tmp/``)."""
    outside = re.compile(r"\.\./shared|/tmp/")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    for folder in ("benchmarks", *PACKAGES):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml")]
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert not found, "paths outside the repository:\n" + "\n".join(found)
