"""What a device downloads to go from release N to N+1: ``python3 -m bench.update_size``.

Measured, in one run (``--out DIR`` keeps ``update-size.json`` and ``.md``):

* sealtree without deltas: the full pack N+1, plus every large object N lacks
  (as stored, and zstd -19 compressed, as a transport could send them);
* sealtree with deltas: the pack delta N -> N+1 (``pack.delta``), an object
  delta (``store.object_delta``) for every new large object whose path holds
  another large object in N, and the remaining new objects zstd -19 compressed;
* ostree (archive repository, both commits): the bytes of the objects N+1 adds
  (what ``ostree pull`` fetches with N present, bodies only) and the size of
  ``ostree static-delta generate --from N --to N+1 --inline`` on disk;
* apply times: the pack delta and the object deltas (in this process, each into
  files that do not exist yet, as a pull writes them) against ``ostree
  static-delta apply-offline`` into a fresh bare-user repository holding N, and
  their ratio: best of 5 each, the three applies taking turns in every round so
  that both sides run under the same load (the machine is shared: run it twice).

Release N is Debian bookworm minbase as debootstrap makes it from bookworm's
main suite (:func:`bench.corpora.debian_minbase`); release N+1 is the same tree
after ``apt-get upgrade`` with bookworm-updates and bookworm-security, run in a
chroot.  Both drop apt's lists and downloaded .debs and carry no device nodes,
as in /work/shared/reference/update-anchors.md, so the figures compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.corpora import DEFAULT_MIRROR, cache_dir, cached, debian_minbase, remove_special_files
from bench.proc import CommandFailed, run

log = logging.getLogger("bench")

UPDATE_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main\n"
    "deb http://deb.debian.org/debian bookworm-updates main\n"
    "deb http://security.debian.org/debian-security bookworm-security main\n"
)


def _strip_apt_state(root: Path) -> None:
    """Remove apt's package lists and downloaded .debs (a release image carries neither)."""
    for directory in (root / "var/lib/apt/lists", root / "var/cache/apt/archives"):
        if not directory.is_dir():
            continue
        for child in directory.iterdir():
            if child.is_dir() and not child.is_symlink():
                if child.name == "partial":
                    for leftover in child.iterdir():
                        leftover.unlink()
                    continue
                shutil.rmtree(child)
            elif child.name != "lock":
                child.unlink()
    for cache in root.glob("var/cache/apt/*.bin"):
        cache.unlink()
    remove_special_files(root)


def _copy_tree(source: Path, dest: Path) -> None:
    """``cp -a SOURCE DEST`` (hard links, xattrs, owners kept)."""
    run(["cp", "-a", "--", source, dest], measure=False)


@contextlib.contextmanager
def _mounted(source: str, target: Path, *options: str) -> Iterator[None]:
    """``mount [OPTIONS] SOURCE TARGET`` for the duration of the block."""
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", *options, source, target], measure=False)
    try:
        yield
    finally:
        run(["umount", "--lazy", target], measure=False)


def _release_n(dest: Path) -> None:
    _copy_tree(debian_minbase(dest.parent.parent), dest)
    _strip_apt_state(dest)


def _release_n1(dest: Path) -> None:
    """Release N plus ``apt-get upgrade`` from bookworm-updates and bookworm-security."""
    _copy_tree(debian_minbase(dest.parent.parent), dest)
    (dest / "etc/apt/sources.list").write_text(UPDATE_SOURCES)
    resolv = dest / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.exists() and not resolv.is_symlink() else None
    shutil.copyfile("/etc/resolv.conf", resolv)
    env = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    # proc: maintainer scripts read /proc; dev: the tree carries no device nodes
    # (stripped), and apt and dpkg write to /dev/null.
    with _mounted("proc", dest / "proc", "-t", "proc"), \
            _mounted("/dev", dest / "dev", "--bind"):
        run(["chroot", dest, "apt-get", "update", "-q"], env=env, measure=False)
        run(["chroot", dest, "apt-get", "upgrade", "-y", "-q"], env=env, measure=False)
        run(["chroot", dest, "apt-get", "clean"], env=env, measure=False)
    if saved is None:
        resolv.unlink()
    else:
        resolv.write_bytes(saved)
    _strip_apt_state(dest)


def release_pair(cache: Path | None = None) -> tuple[Path, Path]:
    """The cached releases N and N+1 (``update-bookworm-n``, ``update-bookworm-n1``)."""
    root = cache or cache_dir()
    return (cached(root, "update-bookworm-n", _release_n),
            cached(root, "update-bookworm-n1", _release_n1))


def _trixie(dest: Path) -> None:
    """``debootstrap --variant=minbase trixie``, apt state and device nodes removed."""
    mirror = os.environ.get("SEALTREE_BENCH_MIRROR", DEFAULT_MIRROR)
    log.info("debootstrap trixie into %s", dest)
    run(["debootstrap", "--variant=minbase", "trixie", dest, mirror], measure=False)
    _strip_apt_state(dest)


def major_pair(cache: Path | None = None) -> tuple[Path, Path]:
    """Release N (bookworm minbase) and a major jump to trixie minbase (``update-trixie``)."""
    root = cache or cache_dir()
    return (cached(root, "update-bookworm-n", _release_n), cached(root, "update-trixie", _trixie))


# -- measuring ------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent


def _sealtree(*argv: str | os.PathLike[str]) -> str:
    env = {"PYTHONPATH": str(REPO_ROOT)}
    return run([sys.executable, "-m", "sealtree", *argv], env=env, measure=False).stdout


@dataclass(frozen=True)
class Release:
    """One release committed and packed: its commit id and pack."""

    commit: str
    pack: Path


def _release(repo: Path, tree: Path, version: str, work: Path) -> Release:
    commit = _sealtree("--repo", repo, "commit", "-b", "os/main", "--skip-special",
                       "--version", version, tree).split()[-1]
    return Release(commit, _pack(repo, commit, work / f"{version}.pack"))


def _pack(repo: Path, commit: str, out: Path, level: int = 19) -> Path:
    _sealtree("--repo", repo, "pack", "build", commit, "--ref", "os/main", "-o", out,
              "--level", str(level))
    return out


def measure_pack_level(repo: Path, old: Release, new: Release, work: Path, level: int
                       ) -> dict[str, Any]:
    """The pack delta when both packs are built at ``level``: the delta works on the expanded
    form, so its size does not change, but the device re-compresses at that level."""
    from pack.delta import apply_pack_delta, make_pack_delta  # noqa: PLC0415

    old_pack = _pack(repo, old.commit, work / f"n-l{level}.pack", level)
    new_pack = _pack(repo, new.commit, work / f"n1-l{level}.pack", level)
    made = make_pack_delta(old_pack, new_pack, work / f"l{level}.pdelta")
    seconds = _best_of(REPEATS, lambda: apply_pack_delta(old_pack, made.path, work / "l.pack"),
                       lambda: _remove(work / "l.pack"))
    return {"level": level, "pack_n1": new_pack.stat().st_size, "pack_delta": made.size,
            "apply_pack_seconds": round(seconds, 3)}


def _update_plan(repo_path: Path, old: Release, new: Release
                 ) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """What N+1 adds: (old object file, new object file, new digest) for each object delta
    candidate (``pack.delta.object_delta_pairs``), and the object files fetched whole."""
    from pack.delta import object_delta_pairs  # noqa: PLC0415 - the bench imports sealtree late
    from pack.reader import PackReader  # noqa: PLC0415
    from store.repo import Repository  # noqa: PLC0415

    objects = Repository.open(str(repo_path)).objects
    with PackReader(old.pack) as old_reader, PackReader(new.pack) as new_reader:
        pairs, whole = object_delta_pairs(old_reader.manifest, new_reader.manifest)
    return ([(objects.file_path(p.source.entry.digest, p.source.entry.meta),
              objects.file_path(p.result.entry.digest, p.result.entry.meta), p.result.entry.digest)
             for p in pairs],
            [objects.file_path(row.entry.digest, row.entry.meta) for row in whole])


def _zstd19(path: str) -> int:
    import zstandard  # noqa: PLC0415

    with open(path, "rb") as handle:
        return len(zstandard.ZstdCompressor(level=19).compress(handle.read()))


REPEATS = 5


def _best_of(repeats: int, action: Callable[[], object],
             prepare: Callable[[], object] | None = None) -> float:
    """The shortest wall time of ``repeats`` runs (the machine is shared: the minimum is
    the least disturbed); ``prepare`` runs untimed before each."""
    best = float("inf")
    for _ in range(repeats):
        if prepare is not None:
            prepare()
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


@dataclass(frozen=True)
class Timed:
    """One side's apply, timed in turns with the other side's (``interleaved``)."""

    name: str
    action: Callable[[], object]
    prepare: Callable[[], object] | None = None


def interleaved(timed: list[Timed], repeats: int = REPEATS) -> dict[str, float]:
    """Best wall time of each action over ``repeats`` rounds, the actions taking turns within
    each round: the machine is shared, and a ratio compares runs made under the same load."""
    best = {t.name: float("inf") for t in timed}
    for _ in range(repeats):
        for entry in timed:
            if entry.prepare is not None:
                entry.prepare()
            started = time.perf_counter()
            entry.action()
            best[entry.name] = min(best[entry.name], time.perf_counter() - started)
    return best


def _remove(path: Path) -> None:
    """Remove a file or a directory tree left by the previous attempt (untimed)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def measure_sealtree(repo: Path, old: Release, new: Release, work: Path
                     ) -> tuple[dict[str, Any], list[Timed]]:
    """Bytes of sealtree's update, with and without deltas, and its two applies to time
    (the pack delta, then the object deltas)."""
    from pack.delta import apply_pack_delta, make_pack_delta  # noqa: PLC0415
    from store import object_delta  # noqa: PLC0415

    pairs, whole_files = _update_plan(repo, old, new)
    fetched = [result for _, result, _ in pairs] + whole_files
    raw = sum(os.path.getsize(f) for f in fetched)
    compressed = sum(_zstd19(f) for f in fetched)
    started = time.perf_counter()
    pack_delta = make_pack_delta(old.pack, new.pack, work / "n-n1.pdelta")
    make_pack_seconds = time.perf_counter() - started
    deltas: list[tuple[str, bytes, str, int]] = []  # (source file, digest, delta file, size)
    whole = sum(_zstd19(f) for f in whole_files)
    started = time.perf_counter()
    for index, (source, result, digest) in enumerate(pairs):
        out = work / f"obj-{index}.odelta"
        size = object_delta.write_object_delta(source, result, out)
        full = _zstd19(result)
        if size is None or size >= full:  # a delta no smaller than the object: send it whole
            whole += full
            continue
        deltas.append((source, digest, str(out), size))
    make_objects_seconds = time.perf_counter() - started
    rebuilt = work / "n1-rebuilt.pack"

    out_dir = work / "rebuilt-objects"
    jobs = [object_delta.ObjectDeltaJob(source, delta, digest, str(out_dir / f"{index}"))
            for index, (source, digest, delta, _size) in enumerate(deltas)]

    def fresh_out_dir() -> None:
        _remove(out_dir)
        out_dir.mkdir()
        os.sync()

    def apply_objects() -> None:
        # As a pull would: on every core, no fsync per object, one sync at the end.
        results = object_delta.apply_object_deltas(jobs)
        refused = [r for r in results if isinstance(r, Exception)]
        if refused:
            raise RuntimeError(f"{len(refused)} object deltas refused: {refused[0]}")
        os.sync()

    object_bytes = sum(d[3] for d in deltas)
    timed = [Timed("apply_pack_seconds", lambda: apply_pack_delta(old.pack, pack_delta.path, rebuilt),
                   lambda: _remove(rebuilt)),
             Timed("apply_objects_seconds", apply_objects, fresh_out_dir)]
    return {
        "pack_n1": new.pack.stat().st_size,
        "new_objects": len(fetched),
        "new_objects_raw": raw,
        "new_objects_zstd19": compressed,
        "without_deltas_raw": new.pack.stat().st_size + raw,
        "without_deltas_zstd19": new.pack.stat().st_size + compressed,
        "pack_delta": pack_delta.size,
        "object_deltas": len(deltas),
        "object_delta_bytes": object_bytes,
        "objects_sent_whole_zstd19": whole,
        "with_deltas": pack_delta.size + object_bytes + whole,
        "make_seconds": round(make_pack_seconds + make_objects_seconds, 2),
    }, timed


def _ostree(*argv: str | os.PathLike[str]) -> str:
    return run(["ostree", *argv], measure=False).stdout


def _objects(repo: Path) -> dict[str, int]:
    found = {}
    for dirpath, _dirs, files in os.walk(repo / "objects"):
        for name in files:
            path = os.path.join(dirpath, name)
            found[path[len(str(repo)):]] = os.lstat(path).st_size
    return found


def measure_ostree(n: Path, n1: Path, work: Path) -> tuple[dict[str, Any], Timed | None]:
    """ostree's figures: object-level pull bytes, static delta size; and its apply to time
    (None when it cannot apply offline)."""
    server = work / "ostree-archive"
    _ostree("init", f"--repo={server}", "--mode=archive")
    _ostree("commit", f"--repo={server}", "--branch=os/n", f"--tree=dir={n}",
            "--timestamp=2026-01-01T00:00:00Z", "--no-xattrs")
    before = _objects(server)
    _ostree("commit", f"--repo={server}", "--branch=os/n1", f"--tree=dir={n1}",
            "--timestamp=2026-01-02T00:00:00Z", "--no-xattrs")
    after = _objects(server)
    added = {k: v for k, v in after.items() if k not in before}
    delta_file = work / "ostree-n-n1.delta"
    started = time.perf_counter()
    _ostree("static-delta", "generate", f"--repo={server}", "--from=os/n", "--to=os/n1",
            "--inline", f"--filename={delta_file}")
    generate_seconds = time.perf_counter() - started
    # Again into the repository, where `static-delta show` finds it: its fallback objects
    # (files ostree leaves out of the delta, fetched whole) count too.
    _ostree("static-delta", "generate", f"--repo={server}", "--from=os/n", "--to=os/n1")
    shown = _ostree("static-delta", "show", f"--repo={server}", _delta_name(server))
    fallback = _fallback_bytes(shown)
    client = work / "ostree-client"

    def fresh_client() -> None:  # each attempt into a fresh client holding N only
        _remove(client)
        _ostree("init", f"--repo={client}", "--mode=bare-user")
        _ostree("pull-local", f"--repo={client}", str(server), "os/n")
        os.sync()  # as before sealtree's attempts: nothing of the set-up left to write back

    def apply() -> None:
        _ostree("static-delta", "apply-offline", f"--repo={client}", str(delta_file))

    timed: Timed | None = Timed("static_delta_apply_seconds", apply, fresh_client)
    fresh_client()
    try:
        apply()
    except CommandFailed as err:  # a delta with HTTP fallback objects cannot apply offline
        log.info("ostree apply-offline refused: %s", err.stderr.strip().splitlines()[-1:])
        timed = None
    return {
        "version": _ostree("--version").split("Version:")[1].split()[0].strip("'\""),
        "pull_objects": len(added),
        "pull_bytes": sum(added.values()),
        "static_delta_bytes": delta_file.stat().st_size,
        "static_delta_fallback_bytes": fallback,
        "static_delta_generate_seconds": round(generate_seconds, 2),
        "static_delta_apply_seconds": None,
        "note": "commits with --no-xattrs (sealtree's trees carry xattrs; minbase has none)",
    }, timed


def _delta_name(server: Path) -> str:
    """The one static delta of ``server``, as ``static-delta show`` wants it."""
    names = _ostree("static-delta", "list", f"--repo={server}").split()
    return names[0]


def _fallback_bytes(shown: str) -> int:
    """What the device fetches beside the delta: ``Total Fallback Size`` (compressed), or 0."""
    for line in shown.splitlines():  # "Total Fallback Size: 4215316 (4.2 MB)"
        if line.strip().startswith("Total Fallback Size:"):
            return int(line.split(":")[1].split()[0])
    return 0


ANCHORS = {"ostree static delta (anchor)": 1_240_921, "zstd --patch-from (anchor)": 1_074_289}


def report(sealtree: dict[str, Any], ostree: dict[str, Any] | None) -> str:
    """The Markdown table of what a device downloads."""
    rows = [("sealtree, no deltas: pack N+1 + new objects as stored", sealtree["without_deltas_raw"]),
            ("sealtree, no deltas: pack N+1 + new objects zstd -19", sealtree["without_deltas_zstd19"]),
            ("sealtree, deltas: pack delta + object deltas + rest zstd -19", sealtree["with_deltas"]),
            ("  of which pack delta", sealtree["pack_delta"]),
            ("  of which object deltas", sealtree["object_delta_bytes"]),
            ("  of which objects sent whole (zstd -19)", sealtree["objects_sent_whole_zstd19"])]
    if ostree:
        rows += [("ostree pull N -> N+1, objects (archive, no deltas)", ostree["pull_bytes"]),
                 ("ostree static delta N -> N+1 (on disk, --inline)", ostree["static_delta_bytes"]),
                 ("  + its fallback objects (fetched whole)", ostree["static_delta_fallback_bytes"])]
    rows += list(ANCHORS.items())
    lines = ["| what a device downloads | bytes |", "|---|---:|"]
    lines += [f"| {what} | {size:,} |" for what, size in rows]
    reference = (ostree["static_delta_bytes"] + ostree["static_delta_fallback_bytes"] if ostree
                 else ANCHORS["ostree static delta (anchor)"])
    lines.append("")
    lines.append(f"sealtree deltas / ostree static delta = {sealtree['with_deltas'] / reference:.2f} "
                 f"(target <= 0.5)")
    ostree_apply = ostree["static_delta_apply_seconds"] if ostree else None
    lines.append(f"apply: sealtree {sealtree['apply_seconds']} s (pack {sealtree['apply_pack_seconds']} s, "
                 f"objects {sealtree['apply_objects_seconds']} s)"
                 + (f"; ostree static-delta apply-offline {ostree_apply} s; ratio "
                    f"{sealtree['apply_seconds'] / ostree_apply:.2f} (target <= 1)"
                    if ostree_apply else
                    "; ostree cannot apply it offline (fallback objects)" if ostree else ""))
    fast = sealtree["pack_level_3"]
    fast_total = fast["apply_pack_seconds"] + sealtree["apply_objects_seconds"]
    lines.append(f"packs built at level 3 instead of 19: pack N+1 {fast['pack_n1']:,} bytes, "
                 f"pack delta {fast['pack_delta']:,} bytes, applied in {fast['apply_pack_seconds']} s "
                 f"(with the objects: {fast_total:.2f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="corpus cache (default: bench's)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where results go")
    parser.add_argument("--no-ostree", action="store_true", help="skip the ostree side")
    parser.add_argument("--major", action="store_true",
                        help="N+1 = trixie minbase (a major jump, for the record)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(REPO_ROOT))
    n, n1 = major_pair(args.cache) if args.major else release_pair(args.cache)
    name = "update-size-major" if args.major else "update-size"
    work = Path(tempfile.mkdtemp(prefix="update-size-", dir=args.cache or cache_dir()))
    try:
        repo = work / "repo"
        _sealtree("--repo", repo, "init")
        old, new = _release(repo, n, "n", work), _release(repo, n1, "n1", work)
        log.info("measuring sealtree")
        sealtree, timed = measure_sealtree(repo, old, new, work)
        ostree = None
        if not args.no_ostree:
            log.info("measuring ostree")
            ostree, ostree_timed = measure_ostree(n, n1, work)
            timed += [ostree_timed] if ostree_timed else []
        log.info("timing the applies, in turns: %s", ", ".join(t.name for t in timed))
        best = interleaved(timed)
        sealtree["apply_pack_seconds"] = round(best["apply_pack_seconds"], 3)
        sealtree["apply_objects_seconds"] = round(best["apply_objects_seconds"], 3)
        sealtree["apply_seconds"] = round(best["apply_pack_seconds"] + best["apply_objects_seconds"], 3)
        sealtree["rebuilt_pack_identical"] = (work / "n1-rebuilt.pack").read_bytes() == \
            new.pack.read_bytes()
        if ostree is not None and "static_delta_apply_seconds" in best:
            ostree["static_delta_apply_seconds"] = round(best["static_delta_apply_seconds"], 3)
        sealtree["pack_level_3"] = measure_pack_level(repo, old, new, work, 3)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}-sealtree.json").write_text(json.dumps(sealtree, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if ostree and ostree["static_delta_apply_seconds"]:
        ostree["apply_ratio"] = round(sealtree["apply_seconds"] / ostree["static_delta_apply_seconds"], 2)
    results = {"sealtree": sealtree, "ostree": ostree, "anchors": ANCHORS,
               "zstandard": __import__("zstandard").__version__}
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(sealtree, ostree)
    (args.out / f"{name}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
