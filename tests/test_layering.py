"""Which package may import which, read from the source (nothing is imported): the layering
the package docstrings and the README state, kept by a test so that it stays true."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level packages it must never import. bench/ may import anything, and
# nothing installed may import it (it is not installed).
FORBIDDEN = {
    "hoi": {"bench"},
    "minibench": {"bench"},
    "pipeline": {"bench", "trainer", "hoi"},
    "trainer": {"bench", "pipeline", "hoi"},
    "cache": {"bench", "pipeline", "trainer", "hoi"},
    "hoidata": {"bench", "pipeline", "trainer", "hoi"},
    # the bottom: infrastructure (errors, files, lock, logs, memory, options) knows no dataset
    "hoicore": {"bench", "minibench", "pipeline", "trainer", "hoi", "cache", "hoidata"},
}


def _imported(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path``, at any depth (function-local ones too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_what_its_layer_allows(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    wrong = {str(f.relative_to(ROOT)): sorted(_imported(f) & FORBIDDEN[package]) for f in files}
    assert not {f: w for f, w in wrong.items() if w}


def test_bench_is_beside_the_packages_not_inside_them():
    assert (ROOT / "bench" / "__main__.py").is_file()
    assert not [p for p in ("hoi/bench.py", "pipeline/bench.py", "trainer/bench.py") if (ROOT / p).exists()]


def _module_imports(package: str) -> dict[str, set[str]]:
    """module -> modules of the same package it imports, at any depth (function-local too:
    an import inside a function only hides a circle until the function runs)."""
    graph = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        mod = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        base = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom):
                parent = base.rsplit(".", node.level - 1)[0] if node.level else ""
                target = ".".join(p for p in (parent, node.module or "") if p) if node.level else node.module
                deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d.split(".")[0] == package} - {mod, package}
    known = set(graph)
    return {m: {d for d in deps if d in known} for m, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        stack.pop()
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_modules_of_a_package_import_each_other_without_a_circle(package):
    assert _cycle(_module_imports(package)) is None


def test_the_tests_mirror_the_packages():
    """A package's tests live in tests/PACKAGE/ (bench/ and scripts/ likewise); tests/faults/
    holds what crosses them all (kills, damaged stores, the fault table); only this file
    stays at the top."""
    tests = ROOT / "tests"
    folders = {p.parent.name for p in tests.rglob("test_*.py") if p.parent != tests}
    assert folders <= set(FORBIDDEN) | {"bench", "scripts", "faults"}, folders
    assert [p.name for p in tests.glob("test_*.py")] == ["test_layering.py"]


def _attribute_reads(path: Path) -> list[str]:
    """String-key reads of a store's ``teacher`` / ``dataset`` / ``layout`` attributes:
    ``x.attrs["teacher"]`` or ``x.attrs.get("layout")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "attrs":
            key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "attrs" and node.args:
            key = node.args[0]
        if isinstance(key, ast.Constant) and key.value in ("teacher", "dataset", "layout"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_readers_use_the_typed_store_attributes():
    """Only the store reads its teacher / dataset / layout attributes by key; everyone else
    reads the typed records (TeacherCache.teacher, .dataset, .layout), so a field has one
    spelling and one type."""
    files = [f for p in ("hoi", "hoidata", "hoicore", "pipeline", "trainer", "bench", "minibench")
             for f in sorted((ROOT / p).rglob("*.py"))]
    assert not [r for f in files for r in _attribute_reads(f)]
