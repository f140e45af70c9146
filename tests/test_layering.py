"""The import graph has layers and every import points down.

Layers, bottom to top: the method core (``fq_export`` without ``fq_export.cli``); the parts built
on it (``calib``: data and its batching for a model, ``converters``: ONNX, ``plugins_trt``: CUDA and
TensorRT), which import only the core; the command line (``fq_export.cli``); the tools and
benchmarks. Every import statement counts, including those inside functions, so a lazy import
cannot hide an arrow upwards. The test also checks the checker: it must see a planted upward import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fq_export", "calib", "converters", "plugins_trt", "benchmarks")
RANK = {"core": 0, "calib": 1, "converters": 1, "plugins_trt": 1, "cli": 2, "tools": 3}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "fq_export":
        return "cli" if len(parts) > 1 and parts[1] == "cli" else "core"
    if parts[0] == "plugins_trt" and len(parts) > 1 and parts[1] == "tools":
        return "tools"
    if parts[0] == "benchmarks":
        return "tools"
    return parts[0] if parts[0] in RANK else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth of its code."""
    tree = ast.parse(source if source is not None else path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    here = layer_of(module_name(path))
    bad = []
    for name in sorted(imported_modules(path, source)):
        there = layer_of(name)
        if there is None or there == here:
            continue
        if RANK[there] >= RANK[here]:  # up, or sideways between the parts built on the core
            bad.append(f"{path.relative_to(ROOT)} ({here}) imports {name} ({there})")
    return bad


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_import_points_down():
    bad = [line for path in sources() for line in upward_imports(path)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path, planted", [
    ("fq_export/layer.py", "def f():\n    from fq_export.cli.common import fail\n"),
    ("fq_export/pipeline.py", "import calib.sources\n"),
    ("calib/sources.py", "def f():\n    from converters import export\n"),
    ("converters/export.py", "from fq_export.cli import main\n"),
])
def test_checker_sees_a_planted_upward_import(path, planted):
    path = ROOT / path
    assert upward_imports(path, path.read_text() + "\n" + planted)


def test_core_imports_at_least_what_it_uses():
    """Sanity of the walk: known downward edges are seen (so an empty 'bad' list means something)."""
    assert "fq_export.models.text" in imported_modules(ROOT / "calib" / "sources.py")
    assert any(n.startswith("fq_export") for n in imported_modules(ROOT / "fq_export" / "cli" / "export.py"))
