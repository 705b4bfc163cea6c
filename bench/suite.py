"""The measurements: each pairs a sealtree operation with its peer on one tree.

| measurement            | sealtree                              | peer                 | target (ratio) |
|------------------------|---------------------------------------|----------------------|----------------|
| commit                 | commit into a fresh repo              | ostree commit, fresh | <= 0.5         |
| checkout               | checkout (hardlinks)                  | ostree checkout      | (none)         |
| deploy --mount         | deploy + mount, one process (headline)| ostree checkout      | < 1.0          |
| deploy (no mount)      | deploy: verify, farm, state           | ostree checkout      | (none)         |
| mount (re-verifies)    | mount of an existing deployment       | (none)               | (none)         |
| deploy --mount, kernel | estimate with kernel fs-verity        | ostree checkout      | (none)         |
| deploy --mount, metacopy | metacopy layout, userspace digests  | ostree checkout      | (none here)    |
| deploy --mount, metacopy, kernel | estimate, verity=require    | ostree checkout      | (none)         |
| the same, per-object step skipped | issue 17's estimate         | ostree checkout      | <= 0.5 (est.)  |
| deploy floor           | Python start, imports, pack signature | ostree checkout      | (none: a floor)|
| fsck                   | fsck                                  | ostree fsck          | <= 1.0         |
| pack build             | pack build                            | (none)               | (none)         |
| pack verify            | pack verify                           | (none)               | (none)         |
| digest                 | sealtree digest, 256 MiB              | fsverity digest      | >= 0.9 (speed) |
| deploy scaling         | deploy --mount, N files               | ostree checkout      | > 1.0 (files/s)|

For times the ratio is sealtree median / peer median (lower is better); for
throughputs it is sealtree rate / peer rate (higher is better).  The transfer
measurements (``bench.transfer``: pull over nginx, also as bytes sent) and the
tar measurements (``bench.tarballs``: commit --tar, export --tar) live in
modules of their own and return the same ``Result``.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import peers
from bench import sealtree_cli as st
from bench.measure import LOAD_SEEN, CachePolicy, SideResult, Trial, measure_one, measure_pair
from bench.proc import Completed, run
from bench.workspace import Workspace, is_mounted, random_file, remove_tree

log = logging.getLogger("bench")

TIMESTAMP = 1_700_000_000
BRANCH = "bench/tree"


@dataclass(frozen=True)
class Target:
    """A bound on the ratio, e.g. ``Target("<=", 0.5)``."""

    op: str
    value: float

    def met(self, ratio: float) -> bool:
        """Whether ``ratio`` satisfies the bound."""
        ops: dict[str, Callable[[float, float], bool]] = {
            "<": operator.lt, "<=": operator.le, ">=": operator.ge, ">": operator.gt}
        return ops[self.op](ratio, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass
class Result:
    """One row of the report."""

    name: str
    corpus: str
    peer_name: str
    sealtree: SideResult
    peer: SideResult
    target: Target | None = None
    kind: str = "time"  # "time" or "size" (lower is better), "rate" (work per second, higher is better)
    work: float = 0.0  # bytes or entries per run, for rates
    work_unit: str = ""
    notes: list[str] = field(default_factory=list)

    def value(self, side: SideResult) -> float | None:
        """The side's headline number: median seconds, median bytes, or work per median second."""
        if self.kind == "size":
            return side.median_size
        median = side.median_s
        if median is None:
            return None
        return self.work / median if self.kind == "rate" else median

    @property
    def ratio(self) -> float | None:
        """sealtree / peer of the headline numbers (see the module docstring)."""
        ours, theirs = self.value(self.sealtree), self.value(self.peer)
        if ours is None or theirs is None or theirs == 0:
            return None
        return ours / theirs

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when there is no target or no ratio."""
        ratio = self.ratio
        return None if self.target is None or ratio is None else self.target.met(ratio)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "name": self.name, "corpus": self.corpus, "peer": self.peer_name, "kind": self.kind,
            "work": self.work, "work_unit": self.work_unit,
            "sealtree": {**self.sealtree.as_dict(), "value": self.value(self.sealtree)},
            "peer_result": {**self.peer.as_dict(), "value": self.value(self.peer)},
            "ratio": self.ratio, "target": str(self.target) if self.target else None,
            "met": self.met, "notes": self.notes,
        }


def not_available(commands: list[str]) -> SideResult:
    """The side result of a measurement whose sealtree commands have not landed."""
    return SideResult(status="not available yet", note="missing: " + ", ".join(commands))


class Suite:
    """Runs the measurements on prepared trees, in one scratch workspace."""

    @property
    def max_load(self) -> float:
        """The highest 1-minute load average seen before a timed run."""
        return round(max(LOAD_SEEN, default=0.0), 2)

    def __init__(self, work: Workspace, repeats: int, cache: CachePolicy) -> None:
        self.work = work
        self.repeats = repeats
        self.cache = cache
        self.warm = CachePolicy(cold=False)
        self._prepared: dict[str, tuple[Path | None, Path]] = {}
        self._imported_into: set[str] = set()

    # --- preparation (untimed) ---------------------------------------------

    def repos(self, corpus: str, tree: Path, ours_needed: bool = True) -> tuple[Path | None, Path]:
        """A sealtree repo (None if commit is missing or not needed) and an ostree repo of ``tree``."""
        if corpus not in self._prepared:
            ours = None
            if ours_needed and not st.missing("init", "commit"):
                ours = self.work.fresh(f"{corpus}.sealtree-repo")
                run(st.init(ours))
                run(st.commit(ours, BRANCH, tree, TIMESTAMP))
            theirs = self.work.fresh(f"{corpus}.ostree-repo")
            run(peers.ostree_init(theirs))
            run(peers.ostree_commit(theirs, BRANCH, tree, TIMESTAMP))
            self._prepared[corpus] = (ours, theirs)
        return self._prepared[corpus]

    def keys(self) -> Path:
        """A keyring directory holding one key pair made by ``sealtree keygen`` (made once)."""
        keydir = self.work.root / "keys"
        if not keydir.exists():
            keydir.mkdir()
            run(st.keygen(keydir / "bench.key"))
        return keydir

    def pack(self, corpus: str, repo: Path) -> Path:
        """The corpus's commit as a pack signed with :meth:`keys` (built once)."""
        path = self.work.root / f"{corpus}.pack"
        if not path.exists():
            run(st.pack_build(repo, BRANCH, path))
            run(st.pack_sign(path, self.keys() / "bench.key"))
        return path

    def forget(self, corpus: str) -> None:
        """Delete the repositories, keys and pack prepared for ``corpus`` (disk is finite)."""
        ours, theirs = self._prepared.pop(corpus, (None, None))
        self._imported_into.discard(corpus)
        pack = self.work.root / f"{corpus}.pack"
        for path in (ours, theirs, pack, pack.with_name(pack.name + ".sig")):
            if path is not None:
                remove_tree(path)

    # --- measurements ------------------------------------------------------

    def commit(self, corpus: str, tree: Path) -> Result:
        """Commit ``tree`` into a fresh repository, sealtree vs ``ostree commit``."""
        result = Result("commit", corpus, "ostree commit", SideResult(), SideResult(), Target("<=", 0.5))
        lacking = st.missing("init", "commit")

        def fresh_repo(side: str, init: Callable[[Path], list[str]]) -> Callable[[int], None]:
            def setup(_i: int) -> None:
                run(init(self.work.fresh(f"commit.{side}")))
            return setup

        ours = None if lacking else Trial(
            setup=fresh_repo("sealtree", st.init),
            body=lambda _i: [run(st.commit(self.work.root / "commit.sealtree", BRANCH, tree, TIMESTAMP))],
            teardown=lambda _i: remove_tree(self.work.root / "commit.sealtree"))
        theirs = Trial(
            setup=fresh_repo("ostree", peers.ostree_init),
            body=lambda _i: [run(peers.ostree_commit(self.work.root / "commit.ostree", BRANCH, tree,
                                                     TIMESTAMP))],
            teardown=lambda _i: remove_tree(self.work.root / "commit.ostree"))
        result.sealtree, result.peer = measure_pair(ours, theirs, self.repeats, self.cache)
        if lacking:
            result.sealtree = not_available(lacking)
        return result

    def checkout(self, corpus: str, tree: Path) -> Result:
        """Hardlink checkout of the committed tree, sealtree vs ``ostree checkout``."""
        result = Result("checkout", corpus, "ostree checkout", SideResult(), SideResult())
        lacking = st.missing("init", "commit", "checkout")
        ours_repo, theirs_repo = self.repos(corpus, tree)
        ours = None if lacking or ours_repo is None else self._checkout_trial(
            lambda dest: st.checkout(ours_repo, BRANCH, dest), "checkout.sealtree")
        theirs = self._checkout_trial(
            lambda dest: peers.ostree_checkout(theirs_repo, BRANCH, dest), "checkout.ostree")
        result.sealtree, result.peer = measure_pair(ours, theirs, self.repeats, self.cache)
        if lacking:
            result.sealtree = not_available(lacking)
        return result

    def _checkout_trial(self, argv: Callable[[Path], list[str]], name: str) -> Trial:
        dest = self.work.root / name
        return Trial(setup=lambda _i: remove_tree(dest), body=lambda _i: [run(argv(dest))],
                     teardown=lambda _i: remove_tree(dest))

    def fsck(self, corpus: str, tree: Path) -> Result:
        """Full repository check, sealtree vs ``ostree fsck``."""
        result = Result("fsck", corpus, "ostree fsck", SideResult(), SideResult(), Target("<=", 1.0))
        lacking = st.missing("init", "commit", "fsck")
        ours_repo, theirs_repo = self.repos(corpus, tree)
        ours = None if lacking or ours_repo is None else Trial(body=lambda _i: [run(st.fsck(ours_repo))])
        theirs = Trial(body=lambda _i: [run(peers.ostree_fsck(theirs_repo))])
        result.sealtree, result.peer = measure_pair(ours, theirs, self.repeats, self.cache)
        if lacking:
            result.sealtree = not_available(lacking)
        return result

    def _deploy_lacking(self, *options: str) -> list[str]:
        """The commands (and deploy options) a deploy measurement needs that sealtree lacks."""
        lacking = st.missing("init", "commit", "keygen", "pack build", "pack sign", "pack import",
                             "deploy", "mount", "umount", "undeploy")
        return lacking + [f"deploy {o}" for o in options
                          if "deploy" not in lacking and not st.has_option("deploy", o)]

    def _ostree_checkout(self, repo: Path) -> Trial:
        return self._checkout_trial(lambda dest: peers.ostree_checkout(repo, BRANCH, dest),
                                    "deploy.ostree")

    def deploy(self, corpus: str, tree: Path, name: str = "deploy --mount",
               repeats: int | None = None, entries: int = 0, layout: str | None = None) -> Result:
        """The headline: ``deploy --mount`` (verify + tmpfs unpack + farm + overlay mount, one
        process) vs ``ostree checkout`` (hardlinks) of the same commit.

        With ``entries`` the result is a rate (entries per second), for the
        scaling curve.  With ``layout``, deploy in that layout (the default is the
        product's: ``auto``, which is hardlinks on a kernel without fs-verity).
        """
        target = Target("<", 1.0) if layout is None else None
        result = Result(name, corpus, "ostree checkout", SideResult(), SideResult(), target)
        if entries:  # a rate: sealtree files/s over ostree's, so "faster" is > 1
            result.kind, result.work, result.work_unit = "rate", float(entries), "files"
            result.target = Target(">", 1.0)
        lacking = self._deploy_lacking("--mount")
        ours_repo, theirs_repo = self.repos(corpus, tree, ours_needed=not lacking)
        ours = None
        if not lacking and ours_repo is not None:
            keydir = self._imported(corpus, ours_repo)
            ours = self._deploy_mount_trial(
                ours_repo, lambda t: st.deploy(ours_repo, BRANCH, keydir, t, layout=layout))
        result.sealtree, result.peer = measure_pair(ours, self._ostree_checkout(theirs_repo),
                                                    repeats or self.repeats, self.cache)
        if lacking:
            result.sealtree = not_available(lacking)
        return result

    def deploy_metacopy(self, corpus: str, tree: Path) -> Result:
        """``deploy --mount --layout metacopy`` (stubs over the objects, no farm) vs ``ostree
        checkout``.  Here, with no fs-verity, the objects are digested in userspace first and
        the kernel does not enforce (``verity=off``); issue 17's target (0.5x) is for the
        kernel-enforced mode, which this machine cannot run: no target on this row."""
        result = self.deploy(corpus, tree, name="deploy --mount, metacopy layout", layout="metacopy")
        result.notes.append("metacopy layout with --verify userspace: objects digested in "
                            "userspace, the kernel does not enforce here (no fs-verity)")
        return result

    def deploy_only(self, corpus: str, tree: Path) -> Result:
        """``deploy`` alone (verify + farm + state, nothing mounted) vs ``ostree checkout``."""
        result = Result("deploy (no mount)", corpus, "ostree checkout", SideResult(), SideResult())
        lacking = self._deploy_lacking()
        ours_repo, theirs_repo = self.repos(corpus, tree, ours_needed=not lacking)
        ours = None
        if not lacking and ours_repo is not None:
            keydir = self._imported(corpus, ours_repo)
            made: list[str] = []

            def body(_i: int) -> list[Completed]:
                done = run(st.deploy(ours_repo, BRANCH, keydir))
                made.append(st.deployment_from_output(done.stdout))
                return [done]

            ours = Trial(body=body, teardown=lambda _i: self._undeploy(ours_repo, made))
        result.sealtree, result.peer = measure_pair(ours, self._ostree_checkout(theirs_repo),
                                                    self.repeats, self.cache)
        if lacking:
            result.sealtree = not_available(lacking)
        return result

    def mount_only(self, corpus: str, tree: Path) -> Result:
        """``mount`` of a deployment made untimed: it re-verifies everything (no peer)."""
        result = Result("mount (re-verifies)", corpus, "", SideResult(), SideResult(status="no peer"))
        lacking = self._deploy_lacking()
        ours_repo, _ = self.repos(corpus, tree, ours_needed=not lacking)
        if lacking or ours_repo is None:
            result.sealtree = not_available(lacking)
            return result
        keydir = self._imported(corpus, ours_repo)
        made: list[str] = []

        def setup(_i: int) -> None:
            made.append(st.deployment_from_output(run(st.deploy(ours_repo, BRANCH, keydir)).stdout))

        trial = self._mounted_trial(
            ours_repo, lambda target: [run(st.mount(ours_repo, made[-1], target, keydir))], setup=setup,
            made=made)
        result.sealtree = measure_one(trial, self.repeats, self.cache)
        return result

    def deploy_kernel_estimate(self, corpus: str, tree: Path, layout: str | None = None,
                               skip_objects: bool = False, name: str | None = None) -> Result:
        """``deploy --mount`` as it would run where the kernel has fs-verity: an estimate (see
        ``bench.kernel_estimate``), vs ``ostree checkout``.  No target: it is not a measurement
        of something sealtree can do on this host.  With ``layout`` "metacopy": issue 17's
        kernel-enforced metacopy layout (see ``deploy_metacopy_estimate``)."""
        if name is None:
            name = "deploy --mount, kernel fs-verity (estimate)" if layout is None else \
                f"deploy --mount, {layout} layout, kernel fs-verity (estimate)"
        result = Result(name, corpus, "ostree checkout", SideResult(), SideResult())
        lacking = self._deploy_lacking("--mount")
        ours_repo, theirs_repo = self.repos(corpus, tree, ours_needed=not lacking)
        ours = None
        if not lacking and ours_repo is not None:
            keydir = self._imported(corpus, ours_repo)
            ours = self._deploy_mount_trial(
                ours_repo, lambda t: st.kernel_estimate(ours_repo, BRANCH, keydir, t, layout=layout,
                                                        skip_objects=skip_objects))
        result.sealtree, result.peer = measure_pair(ours, self._ostree_checkout(theirs_repo),
                                                    self.repeats, self.cache)
        if lacking:
            result.sealtree = not_available(lacking)
        result.notes.append("estimate: the product's deploy --mount with each object's digest "
                            "step replaced by the measure ioctl (bench/kernel_estimate.py)")
        return result

    def deploy_metacopy_estimate(self, corpus: str, tree: Path) -> Result:
        """Issue 17's kernel-enforced metacopy deployment, estimated: ``deploy --mount --layout
        metacopy`` with the per-object userspace digest replaced by the measure ioctl (each
        object still opened, fstat-ed and measured, as on a system with fs-verity), vs
        ``ostree checkout``.  No target: issue 17's is for the estimate with the per-object
        step skipped (``deploy_metacopy_estimate_skipped``); this row says what that step
        costs on top."""
        result = self.deploy_kernel_estimate(corpus, tree, layout="metacopy")
        result.notes.append("metacopy layout mounted verity=require; each object opened and "
                            "measured (the FS_IOC_MEASURE_VERITY call made), its digest not "
                            "computed (the kernel does it at open where it has fs-verity)")
        return result

    def deploy_metacopy_estimate_skipped(self, corpus: str, tree: Path) -> Result:
        """Issue 17's benchmark as the issue defines it: the metacopy estimate "with the
        per-object step skipped" (no open nor measure per object: ``kernel_estimate.py
        --objects skipped``), vs ``ostree checkout``; target 0.5x, named as an estimate."""
        result = self.deploy_kernel_estimate(
            corpus, tree, layout="metacopy", skip_objects=True,
            name="deploy --mount, metacopy layout, kernel fs-verity (estimate, per-object step "
                 "skipped)")
        result.target = Target("<=", 0.5)
        result.notes.append("issue 17's estimate: the per-object step skipped (no open, no "
                            "measure per object); the row above pays it")
        return result

    def deploy_floor(self, corpus: str, tree: Path) -> Result:
        """The floor under any Python deploy (``bench.deploy_floor``): the product's
        interpreter started, ``cryptography`` imported, the corpus's signed
        pack's signature checked; nothing else.  vs ``ostree checkout``, cold like the deploy
        rows.  No target: its ratio is the least the metacopy estimate's can be."""
        result = Result("deploy floor: Python start + imports + pack signature", corpus,
                        "ostree checkout", SideResult(), SideResult())
        lacking = self._deploy_lacking()
        ours_repo, theirs_repo = self.repos(corpus, tree, ours_needed=not lacking)
        ours = None
        if not lacking and ours_repo is not None:
            pack, keydir = self.pack(corpus, ours_repo), self.keys()
            ours = Trial(body=lambda _i: [run(st.deploy_floor(pack, keydir))])
        result.sealtree, result.peer = measure_pair(ours, self._ostree_checkout(theirs_repo),
                                                    self.repeats, self.cache)
        if lacking:
            result.sealtree = not_available(lacking)
        result.notes.append("a floor, not a deploy: the venv's interpreter, the signature "
                            "library imported, the pack's signature checked "
                            "(bench/deploy_floor.py); every deploy does this and more")
        return result

    def _imported(self, corpus: str, repo: Path) -> Path:
        """Import the signed pack into ``repo`` (untimed, once per corpus); return the keyring."""
        keydir = self.keys()
        if corpus not in self._imported_into:
            run(st.pack_import(repo, self.pack(corpus, repo), keydir))
            self._imported_into.add(corpus)
        return keydir

    def _undeploy(self, repo: Path, made: list[str]) -> None:
        while made:
            run(st.undeploy(repo, made.pop()))

    def _deploy_mount_trial(self, repo: Path, argv: Callable[[Path], list[str]]) -> Trial:
        """One command that deploys and mounts at a fresh target (its output names the
        deployment); the teardown unmounts and undeploys it."""
        made: list[str] = []

        def body(target: Path) -> list[Completed]:
            done = run(argv(target))
            made.append(st.deployment_from_output(done.stdout))
            return [done]

        return self._mounted_trial(repo, body, made=made)

    def _mounted_trial(self, repo: Path, body: Callable[[Path], list[Completed]], *,
                       made: list[str], setup: Callable[[int], None] = lambda _i: None) -> Trial:
        """A trial whose body mounts at a fresh target; the teardown unmounts it and undeploys
        every deployment in ``made``, so that no mount and no deployment is left behind."""
        target = self.work.root / "deploy.sealtree-root"

        def timed(_i: int) -> list[Completed]:
            target.mkdir(exist_ok=True)
            return body(target)

        def teardown(_i: int) -> None:
            try:
                if is_mounted(target):
                    run(st.umount(repo, target))
            finally:
                self._undeploy(repo, made)
                remove_tree(target)

        return Trial(setup=setup, body=timed, teardown=teardown)

    def pack_build(self, corpus: str, tree: Path) -> Result:
        """Build the pack of the commit, then sign it (no peer)."""
        result = Result("pack build + sign", corpus, "", SideResult(), SideResult(status="no peer"))
        lacking = st.missing("init", "commit", "keygen", "pack build", "pack sign")
        ours_repo, _ = self.repos(corpus, tree)
        if lacking or ours_repo is None:
            result.sealtree = not_available(lacking)
            return result
        key, out = self.keys() / "bench.key", self.work.root / "pack-build.pack"
        sig = out.with_name(out.name + ".sig")

        def clean(_i: int) -> None:
            remove_tree(out)
            remove_tree(sig)

        trial = Trial(setup=clean, teardown=clean,
                      body=lambda _i: [run(st.pack_build(ours_repo, BRANCH, out)),
                                       run(st.pack_sign(out, key))])
        result.sealtree = measure_one(trial, self.repeats, self.cache)
        return result

    def pack_verify(self, corpus: str, tree: Path) -> Result:
        """Verify the pack's signature and contents (no peer)."""
        result = Result("pack verify", corpus, "", SideResult(), SideResult(status="no peer"))
        lacking = st.missing("init", "commit", "keygen", "pack build", "pack sign", "pack verify")
        ours_repo, _ = self.repos(corpus, tree)
        if lacking or ours_repo is None:
            result.sealtree = not_available(lacking)
            return result
        pack, keydir = self.pack(corpus, ours_repo), self.keys()
        trial = Trial(body=lambda _i: [run(st.pack_verify(pack, keydir))])
        result.sealtree = measure_one(trial, self.repeats, self.cache)
        return result

    def digest(self, size: int) -> Result:
        """fs-verity digest throughput on one file, sealtree vs ``fsverity digest`` (warm cache).

        The file is read once before timing and the cache kept, so both sides
        measure hashing, not the disk.  The two outputs must agree.
        """
        path = random_file(self.work.root / f"digest-{size >> 20}MiB.bin", size)
        result = Result("digest throughput", f"{size >> 20} MiB file", "fsverity digest",
                        SideResult(), SideResult(), Target(">=", 0.9), kind="rate",
                        work=float(size), work_unit="bytes")
        with open(path, "rb") as handle:  # warm the page cache
            while handle.read(16 << 20):
                pass
        lacking = st.missing("digest")
        outputs: dict[str, str] = {}

        def body(name: str, argv: list[str]) -> Callable[[int], list[Completed]]:
            def go(_i: int) -> list[Completed]:
                done = run(argv)
                outputs[name] = done.stdout.split()[0] if done.stdout.split() else ""
                return [done]
            return go

        ours = None if lacking else Trial(body=body("sealtree", st.digest(path)))
        theirs = Trial(body=body("fsverity", peers.fsverity_digest(path)))
        result.sealtree, result.peer = measure_pair(ours, theirs, self.repeats, self.warm)
        if lacking:
            result.sealtree = not_available(lacking)
        elif outputs["sealtree"] != outputs["fsverity"]:
            raise RuntimeError(f"digest mismatch on {path}: sealtree {outputs['sealtree']} "
                               f"vs fsverity {outputs['fsverity']}")
        else:
            result.notes.append(f"digests agree: {outputs['fsverity']}")
        return result
