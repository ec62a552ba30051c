"""Every import of a project module resolves, including the ones inside functions.

A module renamed in one place and still imported lazily somewhere else (e.g. a demo step imported only when it
runs) passes every test that does not reach that line; this walks the syntax trees of services/, training/,
benchmarks/ and scripts/ instead and checks each `services.*` / `training.*` import against the files on disk.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "training")


def _module_exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _project_imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def _files():
    for top in ("services", "training", "benchmarks", "scripts", "tests"):
        yield from sorted((ROOT / top).rglob("*.py"))


def test_every_project_import_resolves():
    broken = []
    for path in _files():
        for lineno, module, name in _project_imports(path):
            if _module_exists(module):
                continue
            if name is None:
                broken.append(f"{path.relative_to(ROOT)}:{lineno}: import {module}")
                continue
            broken.append(f"{path.relative_to(ROOT)}:{lineno}: from {module} import {name}")
    assert not broken, "imports of project modules that do not exist:\n" + "\n".join(broken)


def test_the_check_sees_a_missing_module():
    assert _module_exists("services.gateway.embedding_client")
    assert not _module_exists("services.gateway.client")


@pytest.mark.parametrize("pkg", PACKAGES)
def test_packages_are_importable_roots(pkg):
    assert importlib.util.find_spec(pkg) is not None
