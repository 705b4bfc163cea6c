"""A real Debian root tree (debootstrap minbase) commits, checks out and compares equal."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import assert_same_tree, run_cli

CACHE = os.environ.get("SEALTREE_BENCH_CACHE", os.path.expanduser("~/.cache/sealtree-bench"))


@pytest.fixture(scope="session")
def minbase():
    """The cached minbase tree; built with debootstrap (as bench/ does) when missing."""
    path = os.path.join(CACHE, "minbase")
    if not os.path.isdir(path):
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            pytest.skip("needs root and debootstrap (.ci/run installs it) to build the Debian tree")
        subprocess.run(["python3", "-c", "from bench.corpora import debian_minbase; debian_minbase()"],
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return path


def test_minbase_round_trip(minbase, tmp_path, repo):
    run_cli("commit", "-b", "debian", "--skip-special", minbase, repo=repo.path)
    run_cli("checkout", "debian", str(tmp_path / "out"), repo=repo.path)
    assert_same_tree(minbase, str(tmp_path / "out"))
    fsck = run_cli("fsck", "--json", repo=repo.path).stdout
    assert '"ok": true' in fsck
