"""The one command: ``python3 -m bench.run [--quick] [--out DIR]``.

Builds (or reuses) the corpora, runs every measurement pairwise against its
peer, and writes ``results.json``, ``results.md`` and ``ratios.png`` into
``--out``.  Exits non-zero if any measured command fails; what was measured
until then is still written, with the error.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import corpora, peers, tarballs, update_http
from bench import sealtree_cli as st
from bench.measure import CachePolicy
from bench.proc import CommandFailed
from bench.report import write_all
from bench.suite import Result, Suite
from bench.tarballs import Tarballs, debian_data_tars, tar_of_tree
from bench.transfer import Transfer
from bench.workspace import Workspace

log = logging.getLogger("bench")

COMMANDS = ("init", "commit", "checkout", "fsck", "digest", "keygen", "pack build", "pack sign",
            "pack verify", "pack import", "deploy", "mount", "umount", "undeploy", "export",
            "publish", "remote add", "pull")
GROUPS = ("tree", "estimate", "digest", "scaling", "tar", "pull",
          "update-http")  # what --only chooses from


@dataclass
class Plan:
    """What one mode measures."""

    mode: str
    repeats: int
    corpora: dict[str, Callable[[], Path]]
    digest_bytes: int
    cache: Path
    scaling: list[int] = field(default_factory=list)
    scaling_repeats: int = 3
    groups: tuple[str, ...] = GROUPS
    #: the tar archives of the tar measurements: (label, path) made on demand
    tars: Callable[[Path], list[tuple[str, Path]]] = lambda _work: []
    pull_corpus: str = ""  # the corpus the pull measurements use


def make_plan(args: argparse.Namespace) -> Plan:
    """Quick: one 2,000-file synthetic tree, 2 runs. Full: both Debian trees, 256 MiB, scaling."""
    cache = args.cache
    if args.quick:
        plan = Plan("quick", 2, {"synthetic-2k": lambda: corpora.synthetic(2000, 0, cache)}, 32 << 20,
                    cache, pull_corpus="synthetic-2k",
                    tars=lambda work: [("synthetic-2k.tar", tar_of_tree(corpora.synthetic(2000, 0, cache),
                                                                        work / "synthetic-2k.tar"))])
    else:
        plan = Plan("full", 5, {"minbase": lambda: corpora.debian_minbase(cache),
                                "minbase+python3+perl": lambda: corpora.debian_larger(cache)},
                    256 << 20, cache, [10_000, 50_000, 200_000], pull_corpus="minbase",
                    tars=lambda _work: [(f"{tarballs.PACKAGE} {path.name}", path)
                                        for path in debian_data_tars(cache)])
    if args.quick:  # the update corpora need debootstrap and the network
        plan.groups = tuple(g for g in plan.groups if g != "update-http")
    if args.only:
        plan.groups = tuple(args.only)
    if args.repeats:
        plan.repeats = plan.scaling_repeats = args.repeats
    if args.scaling is not None:
        plan.scaling = args.scaling
    return plan


def machine() -> str:
    """One line saying what ran the benchmarks."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def measure_corpus(suite: Suite, name: str, tree: Path, estimates_only: bool = False) -> list[Result]:
    """Every per-tree measurement, on one corpus (``estimates_only``: the kernel estimates and
    the deploy floor, the ``estimate`` group)."""
    results = []
    steps = (suite.commit, suite.checkout, suite.deploy, suite.deploy_metacopy, suite.deploy_only,
             suite.mount_only, suite.deploy_kernel_estimate, suite.deploy_metacopy_estimate,
             suite.deploy_metacopy_estimate_skipped,
             suite.deploy_floor, suite.fsck, suite.pack_build, suite.pack_verify)
    if estimates_only:
        steps = (suite.deploy_kernel_estimate, suite.deploy_metacopy_estimate,
                 suite.deploy_metacopy_estimate_skipped, suite.deploy_floor)
    for step in steps:
        log.info("%s on %s", step.__name__, name)
        results.append(step(name, tree))
    suite.forget(name)
    return results


def execute(plan: Plan, suite: Suite, meta: dict[str, object], results: list[Result]) -> None:
    """Run the plan, appending to ``results`` as it goes (so a failure keeps what was done)."""
    stats: dict[str, object] = {}
    meta["corpora"] = stats
    meta["groups"] = list(plan.groups)
    for name, build in plan.corpora.items():
        per_tree = "tree" in plan.groups or "estimate" in plan.groups
        if not per_tree and not ("pull" in plan.groups and name == plan.pull_corpus):
            continue
        tree = build()
        stats[name] = corpora.tree_stats(tree).as_dict()
        if per_tree:
            results.extend(measure_corpus(suite, name, tree, estimates_only="tree" not in plan.groups))
        if "pull" in plan.groups and name == plan.pull_corpus:
            log.info("pull over loopback nginx on %s", name)
            results.extend(Transfer(suite.work, suite.repeats, suite.cache, suite.keys).measure(name, tree))
    if "tar" in plan.groups:
        tars = Tarballs(suite.work, suite.repeats, suite.cache)
        for label, archive in plan.tars(suite.work.root):
            log.info("commit --tar and export --tar of %s", label)
            results.extend(tars.measure(archive, label))
    if "update-http" in plan.groups:
        log.info("bookworm point update pulled over loopback nginx by both sides")
        results.extend(update_http.measure(suite.work, suite.repeats, suite.cache, suite.keys, plan.cache))
    if "digest" in plan.groups:
        log.info("digest throughput on %d MiB", plan.digest_bytes >> 20)
        results.append(suite.digest(plan.digest_bytes))
    for n in plan.scaling if "scaling" in plan.groups else []:
        name = f"synthetic-{n // 1000}k"
        tree = corpora.synthetic(n, 0, plan.cache)
        counted = corpora.tree_stats(tree)
        stats[name] = counted.as_dict()
        log.info("deploy scaling at %d files", n)
        results.append(suite.deploy(name, tree, name="deploy scaling", repeats=plan.scaling_repeats,
                                    entries=counted.entries))
        suite.forget(name)


def _scratch(cache: Path) -> Path:
    """A new scratch directory of this run's own under ``CACHE/work`` (runs may overlap)."""
    (cache / "work").mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=cache / "work"))


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine makes results noisy)."""
    return [round(x, 2) for x in os.getloadavg()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see bench/README.md)."""
    parser = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke mode: a 2,000-file synthetic tree, 2 runs, under a minute")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="where to write results.json, results.md, ratios.png (default ./bench-results)")
    parser.add_argument("--cache", type=Path, default=corpora.cache_dir(),
                        help="corpus cache (default $SEALTREE_BENCH_CACHE or ~/.cache/sealtree-bench)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch directory for repos and checkouts (default a new CACHE/work/run-*)")
    parser.add_argument("--repeats", type=int, default=0, help="runs per measurement (median taken)")
    parser.add_argument("--scaling", type=lambda s: [int(x) for x in s.split(",") if x], default=None,
                        help="file counts for the deploy scaling curve, e.g. 10000,50000,200000")
    caches = parser.add_mutually_exclusive_group()
    caches.add_argument("--cold", dest="cold", action="store_true", default=None,
                        help="drop the page cache before every timed run (default in full mode)")
    caches.add_argument("--warm", dest="cold", action="store_false",
                        help="keep the page cache between runs (default in quick mode)")
    parser.add_argument("--only", type=lambda s: [g for g in s.split(",") if g], default=None,
                        help=f"measure only these groups, comma-separated, of: {', '.join(GROUPS)} "
                             "(tree: every per-tree measurement; estimate: the kernel "
                             "estimates and the deploy floor alone)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; return the exit status (non-zero when any command failed)."""
    args = parse_args(argv)
    unknown = [g for g in args.only or [] if g not in GROUPS]
    if unknown:
        print(f"--only: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    st.environment(args.cache)
    if not st.cli_works():
        log.error("`%s --help` fails: the sealtree CLI is broken", " ".join(st.base()))
        return 2
    started = time.monotonic()
    plan = make_plan(args)
    work = Workspace(args.work or _scratch(args.cache))
    cache = CachePolicy(cold=plan.mode == "full" if args.cold is None else args.cold)
    suite = Suite(work, plan.repeats, cache)
    meta: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": plan.mode, "machine": machine(), "repeats": plan.repeats,
        "scaling_repeats": plan.scaling_repeats, "cache": cache.describe(),
        "cache_dir": str(args.cache), "load_average": {"start": _load()},
        "peer_versions": peers.versions(), "peer_setup": peers.describe(),
        "sealtree_command": " ".join(st.base()),
        "sealtree_commands_available": {c: st.available(c) for c in COMMANDS},
        "notes": [("sealtree commit syncs object data before updating the ref; ostree commit runs "
                   "with its default fsync (on), so both pay for durability."),
                  ("Wall time per run includes process start-up (Python interpreter for sealtree). "
                   "sealtree runs as a user installs it: pip-installed from this checkout into a "
                   "virtual environment of its own (sealtree_command), byte-compiled."),
                  "Peak memory is each command's maxrss as reported by GNU time (wait4).",
                  ("deploy runs with --verify userspace (this kernel has no fs-verity): it reads and "
                   "hashes every large object, which ostree checkout never reads; it also syncs the "
                   "farm before recording it (syncfs), where ostree checkout does not sync."),
                  ("deploy runs with --no-default so that each run's deployment can be undeployed "
                   "(the default cannot be); making it the default changes fields of the same "
                   "state file write.")],
    }
    results: list[Result] = []
    status = 0
    try:
        execute(plan, suite, meta, results)
    except (CommandFailed, RuntimeError, ValueError, OSError) as exc:
        log.error("benchmark failed: %s", exc)
        meta["error"] = str(exc)
        status = 1
    finally:
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        load = meta["load_average"]
        assert isinstance(load, dict)
        load["end"] = _load()
        load["max_seen"] = suite.max_load
        if not args.keep_work:
            try:
                work.clean()
            except RuntimeError as exc:  # something is still mounted: leave it for a human
                log.error("scratch directory not removed: %s", exc)
                status = 1
    for path in write_all(args.out, meta, results):
        log.info("wrote %s", path)
    print((args.out / "results.md").read_text())
    return status


if __name__ == "__main__":
    sys.exit(main())
