"""Tar archives in and out: ``commit --tar`` vs ``ostree commit --tree=tar=``, and
``export --tar`` vs ``ostree export`` of the commit made from the same archive (issue 14: both
at most the peer's time).

The archives: in full mode a real Debian package's ``data.tar`` (``apt-get download``, cached
under the bench cache as ``deb-PACKAGE/``), both uncompressed (``dpkg-deb --fsys-tarfile``) and
as shipped (``data.tar.xz``); in quick mode a tar of the quick synthetic tree (no network).
Each commit goes into a fresh repository (bare for ostree, fsync on for both), as in the
``commit`` measurement; each export writes an uncompressed tar to a file.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from bench import corpora, peers
from bench import sealtree_cli as st
from bench.measure import CachePolicy, SideResult, Trial, measure_pair
from bench.proc import run
from bench.suite import Result, Target, not_available
from bench.tools import ensure_tool
from bench.workspace import Workspace, remove_tree

log = logging.getLogger("bench")

PACKAGE = "perl-modules-5.36"  # 2.8 MB .deb, ~1,900 files and 18 MB unpacked: a mid-size package
BRANCH = "bench/tar"
TIMESTAMP = 1_700_000_000


def debian_data_tars(cache: Path, package: str = PACKAGE) -> list[Path]:
    """``data.tar`` (uncompressed) and the shipped ``data.tar.*`` of ``package``, cached."""

    def build(dest: Path) -> None:
        dest.mkdir(parents=True)
        ensure_tool("dpkg-deb", "dpkg")
        ensure_tool("ar", "binutils")
        run(["apt-get", "download", package], cwd=dest, measure=False)
        deb = next(dest.glob("*.deb"))
        with open(dest / "data.tar", "wb") as out:
            subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=out, check=True)
        members = run(["ar", "t", str(deb)], measure=False).stdout.split()
        shipped = next(m for m in members if m.startswith("data.tar."))
        run(["ar", "x", str(deb), shipped], cwd=dest, measure=False)

    directory = corpora.cached(cache, f"deb-{package}", build)
    return [directory / "data.tar", *sorted(directory.glob("data.tar.*"))]


def tar_of_tree(tree: Path, out: Path) -> Path:
    """A GNU tar of ``tree`` (numeric owners, xattrs), made once into ``out``."""
    if not out.exists():
        run(["tar", "--create", f"--file={out}", "--numeric-owner", "--xattrs",
             "--xattrs-include=*", f"--directory={tree}", "."], measure=False)
    return out


class Tarballs:
    """The two tar measurements on one archive."""

    def __init__(self, work: Workspace, repeats: int, cache: CachePolicy) -> None:
        self.work = work
        self.repeats = repeats
        self.cache = cache

    def measure(self, archive: Path, label: str) -> list[Result]:
        """``commit --tar`` and ``export --tar`` of ``archive`` (``label`` names it)."""
        results = [self.commit(archive, label), self.export(archive, label)]
        remove_tree(self.work.root / "tar.sealtree")
        remove_tree(self.work.root / "tar.ostree")
        return results

    def commit(self, archive: Path, label: str) -> Result:
        """Commit ``archive`` into a fresh repository, sealtree vs ostree."""
        result = Result("commit --tar", label, "ostree commit --tree=tar=", SideResult(), SideResult(),
                        Target("<=", 1.0))
        lacking = st.missing("init", "commit")
        if not lacking and not st.has_option("commit", "--tar"):
            lacking = ["commit --tar"]
        ours_repo = self.work.root / "commit-tar.sealtree"
        theirs_repo = self.work.root / "commit-tar.ostree"

        def fresh(repo: Path, init: list[str]) -> None:
            remove_tree(repo)
            run(init, measure=False)

        ours = None if lacking else Trial(
            setup=lambda _i: fresh(ours_repo, st.init(ours_repo)),
            body=lambda _i: [run(st.commit_tar(ours_repo, BRANCH, archive, TIMESTAMP))],
            teardown=lambda _i: remove_tree(ours_repo))
        theirs = Trial(
            setup=lambda _i: fresh(theirs_repo, peers.ostree_init(theirs_repo)),
            body=lambda _i: [run(peers.ostree_commit_tar(theirs_repo, BRANCH, archive, TIMESTAMP))],
            teardown=lambda _i: remove_tree(theirs_repo))
        result.sealtree, result.peer = measure_pair(ours, theirs, self.repeats, self.cache)
        if lacking:
            result.sealtree = not_available(lacking)
        return result

    def _committed(self, archive: Path) -> tuple[Path, Path]:
        """Repositories holding ``archive`` committed by each side (made once per archive)."""
        ours, theirs = self.work.root / "tar.sealtree", self.work.root / "tar.ostree"
        remove_tree(ours)
        remove_tree(theirs)
        run(st.init(ours), measure=False)
        run(st.commit_tar(ours, BRANCH, archive, TIMESTAMP), measure=False)
        run(peers.ostree_init(theirs), measure=False)
        run(peers.ostree_commit_tar(theirs, BRANCH, archive, TIMESTAMP), measure=False)
        return ours, theirs

    def export(self, archive: Path, label: str) -> Result:
        """Export the commit made from ``archive`` as an uncompressed tar file."""
        result = Result("export --tar", label, "ostree export", SideResult(), SideResult(),
                        Target("<=", 1.0))
        lacking = st.missing("init", "commit", "export")
        if lacking:
            result.sealtree = not_available(lacking)
            return result
        ours_repo, theirs_repo = self._committed(archive)
        ours_out, theirs_out = self.work.root / "export.sealtree.tar", self.work.root / "export.ostree.tar"
        ours = Trial(setup=lambda _i: remove_tree(ours_out),
                     body=lambda _i: [run(st.export_tar(ours_repo, BRANCH, ours_out))],
                     teardown=lambda _i: remove_tree(ours_out))
        theirs = Trial(setup=lambda _i: remove_tree(theirs_out),
                       body=lambda _i: [run(peers.ostree_export(theirs_repo, BRANCH, theirs_out))],
                       teardown=lambda _i: remove_tree(theirs_out))
        result.sealtree, result.peer = measure_pair(ours, theirs, self.repeats, self.cache)
        return result
