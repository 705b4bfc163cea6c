"""Linters run as tests: ruff everywhere, mypy (strict) on the library layers and the CLI, and
the layering of DESIGN.md: imports point down, nothing below the CLI prints or exits."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

LAYERS = ["store", "pack", "overlay", "remote", "image", "sealtree"]
# What each layer may import of the project (DESIGN.md: dependencies point down; remote and
# overlay do not import each other).
ALLOWED = {
    "store": {"store"},
    "pack": {"store", "pack"},
    "overlay": {"store", "pack", "overlay"},
    "remote": {"store", "pack", "remote"},
    "image": {"store", "pack", "overlay", "image"},
    "sealtree": set(LAYERS),
}


def _tool(name):
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (pip install {name}); .ci/run installs it")


def test_ruff():
    _tool("ruff")
    proc = subprocess.run(["ruff", "check", *LAYERS, "tests", "bench"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_on_every_layer():
    _tool("mypy")
    proc = subprocess.run([sys.executable, "-m", "mypy", *LAYERS], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _modules(layer):
    for directory, _dirs, files in os.walk(os.path.join(ROOT, layer)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as handle:
                    yield os.path.relpath(path, ROOT), ast.parse(handle.read())


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down(layer):
    wrong = []
    for path, tree in _modules(layer):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in LAYERS and top not in ALLOWED[layer]:
                    wrong.append(f"{path}:{node.lineno}: imports {name}")
    assert wrong == []


@pytest.mark.parametrize("layer", ["store", "pack", "remote", "image"])
def test_libraries_neither_print_nor_exit(layer):
    # overlay is left out: its boot verifier's entry point prints console lines and exits.
    wrong = []
    for path, tree in _modules(layer):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id == "print":
                    name = "print"
                elif isinstance(func, ast.Attribute) and func.attr == "exit":
                    name = "exit"
                else:
                    continue
                wrong.append(f"{path}:{node.lineno}: {name}()")
    assert wrong == []
