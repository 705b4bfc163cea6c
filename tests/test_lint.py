"""Linters run as tests: ruff everywhere, mypy (strict) on the library layers and the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def _tool(name):
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (pip install {name}); .ci/run installs it")


def test_ruff():
    _tool("ruff")
    proc = subprocess.run(["ruff", "check", "store", "pack", "overlay", "sealtree", "tests", "bench"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_on_every_layer():
    _tool("mypy")
    proc = subprocess.run([sys.executable, "-m", "mypy", "store", "pack", "overlay", "sealtree"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
