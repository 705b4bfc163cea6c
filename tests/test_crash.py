"""A commit killed part way leaves the repository consistent and the ref unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from store.fsck import fsck
from store.prune import prune
from tests.helpers import ROOT, run_cli


def test_kill_during_large_commit(tmp_path, repo):
    first = tmp_path / "first"
    first.mkdir()
    (first / "f").write_text("v1")
    run_cli("commit", "-b", "main", str(first), repo=repo.path)
    before = repo.refs.read("main")

    big = tmp_path / "big"
    big.mkdir()
    for i in range(400):
        (big / f"file{i:04}").write_bytes(os.urandom(64 << 10) if i % 10 else os.urandom(6 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "sealtree", "--repo", repo.path, "commit", "-b", "main",
                             str(big)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    staging = os.path.join(repo.path, "tmp")
    deadline = time.monotonic() + 60
    # Wait until objects are being staged, then kill with no chance to clean up.
    while time.monotonic() < deadline and proc.poll() is None:
        stages = [d for d in os.listdir(staging) if d.startswith("staging-")]
        if stages and sum(len(f) for _, _, f in os.walk(os.path.join(staging, stages[0]))) > 40:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "commit finished before it could be interrupted; make the tree larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert repo.refs.read("main") == before
    report = fsck(repo)
    assert report.problems == []
    # The next writer cleans the leftovers of the killed one.
    prune(repo)
    assert [d for d in os.listdir(staging)] == []
    assert fsck(repo).problems == []
