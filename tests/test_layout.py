"""The code's layers, as the layout promises: deployments → scoring → kernels, and only deployments start Ray or
vLLM (scoring and kernels run on their own: on the GPU host without either, and in the unit tests)."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

# what each top-level package may not import (at any depth, functions included)
FORBIDDEN = {
    "scoring": ("deployments", "ray", "vllm"),
    "kernels": ("deployments", "scoring", "ray", "vllm"),
}


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    wrong = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for module in imported_modules(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert not wrong, wrong


def test_every_scoring_package_is_a_package():
    folders = [p for p in (ROOT / "scoring").iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert folders, "scoring/ has no packages"
    assert all((folder / "__init__.py").is_file() for folder in folders)
