"""A real Debian root tree (debootstrap minbase) commits, checks out and compares equal."""

from __future__ import annotations

from tests.helpers import assert_same_tree, run_cli


def test_minbase_round_trip(minbase, tmp_path, repo):
    run_cli("commit", "-b", "debian", "--skip-special", minbase, repo=repo.path)
    run_cli("checkout", "debian", str(tmp_path / "out"), repo=repo.path)
    assert_same_tree(minbase, str(tmp_path / "out"))
    fsck = run_cli("fsck", "--json", repo=repo.path).stdout
    assert '"ok": true' in fsck
