"""An update pulled over HTTP by both sides (issue 18): ``python3 -m bench.run --only update-http``.

Release N is Debian bookworm minbase, release N+1 the same tree after the point update
(``bench.update_size.release_pair``: the cached corpora ``update-bookworm-n`` and
``-n1``).  One loopback nginx (``bench.nginx``) serves both vendors:

* ``site/``: sealtree's published site; N published, then N+1 with
  ``publish --deltas-from 1`` (a pack delta and object deltas from N);
* ``ostree/``: an archive-mode ostree repository with N and N+1 on one branch, and
  ``ostree static-delta generate --from N --to N+1`` in it (``summary -u`` after).

Each side's device holds N (pulled over the same nginx, untimed, kept as a template); each
timed run starts from a fresh copy of it (untimed) and pulls N+1:

* sealtree ``pull`` (deltas used) and ``pull --no-deltas``;
* ``ostree pull --disable-static-deltas`` (object by object, N's objects reused) and
  ``ostree pull --require-static-deltas`` (the static delta over HTTP).

Bytes are what nginx sent for the run (headers included, from its access log), time the
pull's wall time; the four pulls alternate their order from run to run.  Targets (issue 18):
sealtree's delta update at most 0.5x the ostree static delta's bytes; its time (which
includes applying the deltas) at most ostree's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from bench import peers
from bench import sealtree_cli as st
from bench.measure import CachePolicy, SideResult, Trial, sample
from bench.nginx import Nginx, serving
from bench.proc import Completed, run
from bench.suite import Result, Target, not_available
from bench.update_size import release_pair
from bench.workspace import Workspace, remove_tree

log = logging.getLogger("bench")

BRANCH = "bench/update"
TIMESTAMP = 1_700_000_000
REMOTE = "vendor"
CORPUS = "bookworm N -> N+1"
REPO_ROOT = Path(__file__).resolve().parent.parent
SIDES = ("sealtree deltas", "sealtree --no-deltas", "ostree objects", "ostree static delta")


class UpdateHttp:
    """The measurement (see the module docstring)."""

    def __init__(self, work: Workspace, repeats: int, cache: CachePolicy, keys: Callable[[], Path],
                 corpora: Path) -> None:
        self.work = work
        self.repeats = repeats
        self.cache = cache
        self.keys = keys
        self.corpora = corpora
        self.root = work.root / "update-http"
        self.web = self.root / "web"
        self.site = self.web / "site"
        self.archive = self.web / "ostree"
        self.static_delta_files = 0

    def measure(self) -> list[Result]:
        lacking = st.missing("init", "commit", "publish", "remote add", "pull")
        if lacking or not st.has_option("publish", "--deltas-from"):
            return [Result(f"update N -> N+1 over HTTP: {what}", CORPUS, "ostree static delta",
                           not_available(lacking or ["publish --deltas-from"]),
                           SideResult(status="not measured")) for what in ("bytes", "time")]
        n, n1 = release_pair(self.corpora)
        remove_tree(self.root)
        self.root.mkdir(parents=True)
        try:
            return self._measure(n, n1)
        finally:
            remove_tree(self.root)

    def _measure(self, n: Path, n1: Path) -> list[Result]:
        vendor = self.root / "vendor.sealtree"
        key = self.keys() / "bench.key"
        run(st.init(vendor), measure=False)
        self.web.mkdir(parents=True)
        run(peers.ostree_init(self.archive, "archive"), measure=False)
        log.info("update-http: release N on both vendors")
        self._release(vendor, n, 1, key, deltas=False)
        with serving(self.web, self.root / "nginx") as server:
            ours, theirs = self.root / "device-n.sealtree", self.root / "device-n.ostree"
            run(st.init(ours), measure=False)
            run(st.remote_add(ours, REMOTE, server.url + "site/", self.keys()), measure=False)
            run(st.pull(ours, REMOTE), measure=False)
            run(peers.ostree_init(theirs), measure=False)
            run(peers.ostree_remote_add(theirs, REMOTE, server.url + "ostree/"), measure=False)
            run(peers.ostree_pull(theirs, REMOTE, BRANCH), measure=False)
            log.info("update-http: release N+1 on both vendors (deltas, static delta)")
            self._release(vendor, n1, 2, key, deltas=True)
            run([peers.ostree(), "static-delta", "generate", f"--repo={self.archive}",
                 f"--from={BRANCH}^", f"--to={BRANCH}"], measure=False)
            run([peers.ostree(), "summary", "-u", f"--repo={self.archive}"], measure=False)
            self.static_delta_files = sum(f.stat().st_size for f in (self.archive / "deltas").rglob("*")
                                          if f.is_file())
            return self._runs(server, ours, theirs)

    def _release(self, vendor: Path, tree: Path, number: int, key: Path, *, deltas: bool) -> None:
        """Commit and publish on both vendors (untimed).  sealtree's vendor side runs from this
        checkout with this Python, as a vendor installs ``sealtree[delta]``: bsdiff4 (the
        ``delta`` extra, absent from the bench's own virtual environment) makes the object
        deltas about 20% smaller; devices need only sealtree to apply them."""
        vendor_side = [sys.executable, "-m", "sealtree", "--repo", str(vendor)]
        env = {"PYTHONPATH": str(REPO_ROOT)}
        run([*vendor_side, "commit", "-b", BRANCH, "-s", "bench", "--skip-special", "--timestamp",
             str(TIMESTAMP + number), str(tree)], env=env, measure=False)
        publish = [*vendor_side, "publish", str(self.site), BRANCH, "--key", str(key)]
        run([*publish, "--deltas-from", "1"] if deltas else publish, env=env, measure=False)
        run(peers.ostree_commit(self.archive, BRANCH, tree, TIMESTAMP + number), measure=False)

    def _runs(self, server: Nginx, ours: Path, theirs: Path) -> list[Result]:
        device = {side: self.root / f"device-{i}" for i, side in enumerate(SIDES)}
        template = {SIDES[0]: ours, SIDES[1]: ours, SIDES[2]: theirs, SIDES[3]: theirs}
        argv = {
            SIDES[0]: st.pull(device[SIDES[0]], REMOTE),
            SIDES[1]: [*st.pull(device[SIDES[1]], REMOTE), "--no-deltas"],
            SIDES[2]: [*peers.ostree_pull(device[SIDES[2]], REMOTE, BRANCH), "--disable-static-deltas"],
            SIDES[3]: [*peers.ostree_pull(device[SIDES[3]], REMOTE, BRANCH), "--require-static-deltas"],
        }
        prefix = {SIDES[0]: "site", SIDES[1]: "site", SIDES[2]: "ostree", SIDES[3]: "ostree"}
        results = {side: SideResult() for side in SIDES}
        reported: dict[str, list[dict[str, object]]] = {SIDES[0]: [], SIDES[1]: []}
        split: list[dict[str, int]] = []  # what the static-delta pulls fetched, by directory

        def trial(side: str) -> Trial:
            def setup(_i: int) -> None:
                remove_tree(device[side])
                run(["cp", "-a", "--reflink=auto", str(template[side]), str(device[side])], measure=False)

            def body(_i: int) -> list[Completed]:
                start = server.log_offset()
                done = run(argv[side])
                results[side].sizes.append(server.bytes_sent(start, prefix[side])[0])
                if side == SIDES[3]:
                    split.append(_by_directory(server, start, prefix[side]))
                if side in reported:
                    doc = json.loads(done.stdout)
                    reported[side].append({k: doc[k] for k in ("bytes_fetched", "bytes_full",
                                                               "deltas_used")})
                return [done]

            return Trial(body=body, setup=setup, teardown=lambda _i: remove_tree(device[side]))

        trials = {side: trial(side) for side in SIDES}
        for index in range(self.repeats):
            order = list(SIDES[index % len(SIDES):] + SIDES[:index % len(SIDES)])
            for side in order:
                log.info("update-http run %d: %s", index + 1, side)
                results[side].samples.append(sample(trials[side], index, self.cache))
        return self._report(results, reported, split)

    def _report(self, results: dict[str, SideResult], reported: dict[str, list[dict[str, object]]],
                split: list[dict[str, int]]) -> list[Result]:
        deltas, full, objects, static = (results[s] for s in SIDES)
        note = "bytes nginx sent (headers included), from its access log"
        client = f"sealtree pull --json: {reported[SIDES[0]][-1]}" if reported[SIDES[0]] else ""
        fetched = (f"ostree pull --require-static-deltas fetched, by directory: {split[-1]} (ostree "
                   f"{peers.versions()['ostree']} fetches the commit's new objects loose while the "
                   f"delta part downloads)") if split else ""
        on_disk = SideResult(sizes=[self.static_delta_files])
        rows = [
            Result("update N -> N+1 over HTTP, deltas: bytes", CORPUS, "ostree static delta (HTTP)",
                   deltas, static, Target("<=", 0.5), kind="size",
                   notes=[n for n in (note, client, fetched) if n]),
            Result("update N -> N+1 over HTTP, deltas: bytes", CORPUS, "ostree static delta files",
                   deltas, on_disk, Target("<=", 0.5), kind="size",
                   notes=["peer: the size of the static delta's files in the archive repository "
                          "(superblock and parts), what its pull would fetch without the loose objects"]),
            Result("update N -> N+1 over HTTP, deltas: time", CORPUS, "ostree static delta (HTTP)",
                   deltas, static, Target("<=", 1.0),
                   notes=["whole pull: index, deltas fetched and applied, import"]),
            Result("update N -> N+1 over HTTP, deltas: bytes", CORPUS, "ostree pull, objects",
                   deltas, objects, kind="size", notes=[note]),
            Result("update N -> N+1 over HTTP, deltas: time", CORPUS, "ostree pull, objects",
                   deltas, objects),
            Result("update N -> N+1 over HTTP, --no-deltas: bytes", CORPUS, "ostree pull, objects",
                   full, objects, kind="size", notes=[note]),
            Result("update N -> N+1 over HTTP, --no-deltas: time", CORPUS, "ostree pull, objects",
                   full, objects),
        ]
        return rows


def _by_directory(server: Nginx, since: int, prefix: str) -> dict[str, int]:
    """Bytes nginx sent since ``since`` for URIs under ``/prefix/``, by their next directory."""
    out: dict[str, int] = {}
    with open(server.log, "rb") as handle:
        handle.seek(since)
        for line in handle.read().decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].startswith(f"/{prefix}/") and parts[2].isdigit():
                name = parts[0].split("/")[2]
                out[name] = out.get(name, 0) + int(parts[2])
    return out


def measure(work: Workspace, repeats: int, cache: CachePolicy, keys: Callable[[], Path],
            corpora: Path) -> list[Result]:
    """The update-http rows (see the module docstring)."""
    os.makedirs(work.root, exist_ok=True)
    return UpdateHttp(work, repeats, cache, keys, corpora).measure()
