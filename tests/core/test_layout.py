"""The layout rules of docs/architecture.md: imports point down the pipeline, no cycles, small
modules, and the core names no built-in condition kind or dataset."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "flowcond"
MAX_LINES = 400

#: layer of each top-level part of the package; a module may import its own layer or lower ones
LAYERS = {
    "errors": 0,
    "hookspecs": 0,
    "_compat": 0,
    "io": 1,
    "registry": 2,
    "conditions": 2,
    "contract": 2,
    "datasets": 2,
    "training": 3,
    "distributed": 3,
    "augment": 3,
    "convnet": 3,
    "flow": 4,
    "caglow": 5,
    "paper": 6,
    "demo": 7,
    "cli": 7,
    "testing": 7,
    "__init__": 8,
}
#: names of built-in kinds and labelled datasets the core must not depend on ("attributes" is also
#: an ordinary word for a binary label field, e.g. a key of results.json; the default training
#: dataset "mnist5k" is a default value, not a dependency)
BUILTIN_NAMES = {"ids", "codes", "mnist5k-morpho"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _top_level_imports(path: Path, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """flowcond modules imported at module level (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("flowcond"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                if base.startswith("flowcond"):
                    for a in node.names:  # `from pkg import submodule` imports the submodule
                        sub = f"{base}.{a.name}"
                        found.add(sub if sub in modules else base)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1] if len(parts) > 1 else "__init__", 8)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = _top_level_imports(path, name, path.name == "__init__.py", set(modules))
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def test_no_module_is_too_long():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_imports_point_down_the_pipeline():
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        for dep in deps
        if _layer(dep) > _layer(mod) and not dep.startswith(mod + ".")
    ]
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            # a package importing its own submodules is not a cycle through the package
            if node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_core_names_no_builtin_kind_or_dataset():
    hits = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("testing.py", "_compat.py"):
            continue  # test fixtures name their own tiny dataset's fields
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in BUILTIN_NAMES or node.value.endswith("-morpho"):
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not hits, "the core names built-in plugins:\n" + "\n".join(hits)


def test_the_layout_checks_read_the_real_import_graph():
    """The checks above are not vacuous: they see the package's module-level imports."""
    graph = _graph()
    assert sum(len(v) for v in graph.values()) > 50
    assert "flowcond.flow.backbone" in graph["flowcond.caglow.heads"]


def test_pyproject_lists_every_package() -> None:
    """A non-editable ``pip install .`` ships only the packages pyproject.toml lists."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(path.parent.relative_to(ROOT).parts) for path in PACKAGE.rglob("__init__.py")}
    assert folders - listed == set(), "packages missing from pyproject.toml [tool.setuptools]"
    assert listed - folders == {"flowcond_plugins"}
