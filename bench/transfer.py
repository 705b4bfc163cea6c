"""Pulling over HTTP (issue 16): ``sealtree pull`` from a published site vs ``ostree pull``
from an archive-mode ostree repository of the same tree, both served by one loopback nginx
(``bench.nginx``), in the same run.

Two situations, each measured as time and as bytes sent by nginx (headers included, from its
access log):

* **pull, empty repository**: a fresh device repository (``init`` and ``remote add``
  untimed) pulls the tree;
* **pull, 90% present**: the device already holds release 1 and pulls release 2, the same
  tree with 10% of its regular files changed (seeded, by count): about 90% of the objects are
  present.  Each run starts from a copy (untimed) of a repository that pulled release 1.

The vendor side is prepared untimed: release 1 committed, published (sealtree) and committed
into the archive repository (ostree), device templates pulled, then release 2 committed and
published on both.  The pulls fetch release 2.  Targets (issue 16): time at most 0.5x the
peer's, bytes at most 1.0x, for the pull into an empty repository.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

from bench import peers
from bench import sealtree_cli as st
from bench.measure import CachePolicy, SideResult, Trial, sample
from bench.nginx import Nginx, serving
from bench.proc import Completed, run
from bench.suite import Result, Target, not_available
from bench.workspace import Workspace, remove_tree

log = logging.getLogger("bench")

BRANCH = "bench/pull"
TIMESTAMP = 1_700_000_000
CHANGED = 0.10  # fraction of regular files release 2 changes
REMOTE = "vendor"


def changed_copy(tree: Path, dest: Path, fraction: float = CHANGED, seed: int = 0) -> int:
    """Copy ``tree`` to ``dest`` (reflinks where the filesystem has them) and append a line to
    ``fraction`` of its regular files, chosen with ``seed``; return how many were changed."""
    remove_tree(dest)
    run(["cp", "-a", "--reflink=auto", str(tree), str(dest)], measure=False)
    regular = sorted(os.path.join(d, f) for d, _dirs, files in os.walk(dest) for f in files
                     if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
    chosen = random.Random(seed).sample(regular, round(len(regular) * fraction))
    for path in chosen:
        mode = os.stat(path).st_mode
        os.chmod(path, mode | 0o200)
        with open(path, "ab") as handle:
            handle.write(b"\nrelease 2\n")
        os.chmod(path, mode)
    return len(chosen)


class Transfer:
    """The pull measurements on one tree (see the module docstring)."""

    def __init__(self, work: Workspace, repeats: int, cache: CachePolicy,
                 keys: Callable[[], Path]) -> None:
        self.work = work
        self.repeats = repeats
        self.cache = cache
        self.keys = keys
        self.web = work.root / "web"
        self.site = self.web / "site"
        self.archive = self.web / "ostree"

    def measure(self, corpus: str, tree: Path) -> list[Result]:
        """Prepare both vendors, serve them, and measure both situations."""
        lacking = st.missing("init", "commit", "keygen", "publish", "remote add", "pull")
        names = ("pull, empty repository", "pull, 90% present")
        if lacking:
            return [Result(f"{name}: {what}", corpus, "ostree pull", not_available(lacking),
                           SideResult(status="not measured")) for name in names
                    for what in ("time", "bytes")]
        try:
            vendor = self._vendor_release(tree, 1)
            with serving(self.web, self.work.root / "nginx") as server:
                ours_v1, theirs_v1 = self._templates(server)
                release2 = self.work.root / "pull-tree-2"
                changed = changed_copy(tree, release2)
                self._vendor_release(release2, 2, vendor)
                remove_tree(release2)
                results = self._pair(names[0], corpus, server, None, None, Target("<=", 0.5))
                results += self._pair(names[1], corpus, server, ours_v1, theirs_v1, None)
                results[-1].notes.append(f"release 2 changes {changed} regular files "
                                         f"({CHANGED:.0%} of them)")
        finally:
            for path in ("pull-vendor", "pull-tree-2", "pull-device-1.sealtree",
                         "pull-device-1.ostree", "pull-device.sealtree", "pull-device.ostree", "web"):
                remove_tree(self.work.root / path)
        return results

    def _vendor_release(self, tree: Path, release: int, vendor: Path | None = None) -> Path:
        """Commit ``tree`` as release N on both vendors and publish it (untimed)."""
        key = self.keys() / "bench.key"
        if vendor is None:
            vendor = self.work.fresh("pull-vendor")
            run(st.init(vendor), measure=False)
            self.web.mkdir(parents=True, exist_ok=True)
            run(peers.ostree_init(self.archive, "archive"), measure=False)
        run(st.commit(vendor, BRANCH, tree, TIMESTAMP + release), measure=False)
        run(st.publish(vendor, self.site, BRANCH, key), measure=False)
        run(peers.ostree_commit(self.archive, BRANCH, tree, TIMESTAMP + release), measure=False)
        return vendor

    def _fresh_device(self, server: Nginx, ours: Path, theirs: Path) -> None:
        remove_tree(ours)
        remove_tree(theirs)
        run(st.init(ours), measure=False)
        run(st.remote_add(ours, REMOTE, server.url + "site/", self.keys()), measure=False)
        run(peers.ostree_init(theirs), measure=False)
        run(peers.ostree_remote_add(theirs, REMOTE, server.url + "ostree/"), measure=False)

    def _templates(self, server: Nginx) -> tuple[Path, Path]:
        """Device repositories holding release 1 (for the 90% measurement)."""
        ours, theirs = self.work.root / "pull-device-1.sealtree", self.work.root / "pull-device-1.ostree"
        self._fresh_device(server, ours, theirs)
        run(st.pull(ours, REMOTE), measure=False)
        run(peers.ostree_pull(theirs, REMOTE, BRANCH), measure=False)
        return ours, theirs

    def _pair(self, name: str, corpus: str, server: Nginx, ours_from: Path | None,
              theirs_from: Path | None, time_target: Target | None) -> list[Result]:
        """Time and bytes of one situation: a pull into a fresh device repository, or into a
        copy of ``*_from``."""
        ours, theirs = self.work.root / "pull-device.sealtree", self.work.root / "pull-device.ostree"
        sent: dict[str, list[int]] = {"site": [], "ostree": []}

        def setup(_i: int) -> None:
            if ours_from is None or theirs_from is None:
                self._fresh_device(server, ours, theirs)
                return
            for source, dest in ((ours_from, ours), (theirs_from, theirs)):
                remove_tree(dest)
                run(["cp", "-a", "--reflink=auto", str(source), str(dest)], measure=False)

        def pulling(prefix: str, argv: list[str]) -> Callable[[int], list[Completed]]:
            def body(_i: int) -> list[Completed]:
                start = server.log_offset()
                done = run(argv)
                sent[prefix].append(server.bytes_sent(start, prefix)[0])
                return [done]
            return body

        def teardown(_i: int) -> None:
            remove_tree(ours)
            remove_tree(theirs)

        # both sides share one setup (it makes both devices): the peer's trial sets up nothing
        ours_trial = Trial(setup=setup, body=pulling("site", st.pull(ours, REMOTE)))
        theirs_trial = Trial(body=pulling("ostree", peers.ostree_pull(theirs, REMOTE, BRANCH)),
                             teardown=teardown)
        timed = Result(f"{name}: time", corpus, "ostree pull", SideResult(), SideResult(), time_target)
        timed.sealtree, timed.peer = _measure_with_shared_setup(ours_trial, theirs_trial, self.repeats,
                                                                self.cache)
        size = Result(f"{name}: bytes", corpus, "ostree pull", SideResult(sizes=sent["site"]),
                      SideResult(sizes=sent["ostree"]),
                      Target("<=", 1.0) if time_target is not None else None, kind="size")
        size.notes.append("bytes nginx sent (headers included), from its access log")
        return [timed, size]


def _measure_with_shared_setup(ours: Trial, theirs: Trial, repeats: int, cache: CachePolicy,
                               ) -> tuple[SideResult, SideResult]:
    """``measure_pair`` where ``ours.setup`` prepares both sides and ``theirs.teardown`` cleans
    both: each run sets up once, then times the two sides in alternating order."""
    mine, peer = SideResult(), SideResult()
    for index in range(repeats):
        ours.setup(index)
        try:
            order = [(Trial(body=ours.body), mine), (Trial(body=theirs.body), peer)]
            if index % 2:
                order.reverse()
            for trial, result in order:
                result.samples.append(sample(trial, index, cache))
        finally:
            theirs.teardown(index)
    return mine, peer
