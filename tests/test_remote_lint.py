"""Linters on the remote layer (tests/test_lint.py covers the layers that existed before it),
and its place in the layering: remote never imports overlay."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def test_ruff_and_mypy_strict_on_remote():
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed")
    proc = subprocess.run(["ruff", "check", "remote", "sealtree/commands/remote_cmds.py"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mypy", "remote"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_remote_imports_only_store_pack_and_libraries():
    for name in os.listdir(os.path.join(ROOT, "remote")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "remote", name)) as handle:
                text = handle.read()
            assert not re.search(r"^\s*(from|import) (overlay|sealtree)\b", text, re.M), name
            assert "print(" not in text and "sys.exit" not in text, name
