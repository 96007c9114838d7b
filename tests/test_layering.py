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
    "hoicore": {"bench", "pipeline", "trainer", "hoi"},
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
