"""Checking a repository: every object's bytes and metadata, and every ref's reachability.

Each problem names the object and, where a ref reaches it, the tree path.  Bundles
(store.bundles) are checked whole (their SHA-256 is their name, their table is sound) and
record by record (content and metadata against id and meta key); a problem in one names the
bundle, and the object.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from . import xattrs
from .bundles import FILE, NAME, NO_META_KEY, TREE, bundle_names, check_bundle
from .commits import decode_commit
from .errors import FormatError, ObjectMissing, RefError, SealtreeError
from .forked import Forked, SharedCounts, collect, worker_count
from .fsverity import digest_file
from .ids import RawId, to_hex
from .model import Meta
from .names import show
from .objects import StoredObject
from .reach import reachable
from .readahead import read_ahead
from .repo import Repository
from .tree import decode_tree

Progress = Callable[[int, int], None]  # (objects checked, objects in all)


@dataclass
class Problem:
    kind: str  # "corrupt", "missing" or "stray"
    object_id: str
    path: str  # where in a tree ("ref:path"), else the object file
    message: str


@dataclass
class FsckReport:
    objects: int = 0
    bytes: int = 0
    refs: int = 0
    problems: list[Problem] = field(default_factory=list)


def _check_file(path: str, hex_id: str, meta_key: str) -> str | None:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        digest = digest_file(path).hex()
        meta = Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs.read(path.encode()))
    except OSError as err:
        return f"unreadable: {err.strerror}"
    if digest != hex_id:
        return f"content changed: fs-verity digest is {digest}"
    if meta.object_key() != meta_key:
        return (f"inode metadata changed: mode {meta.mode:#o} uid {meta.uid} gid {meta.gid} "
                f"{len(meta.xattrs)} xattrs do not match the object's key")
    return None


def _check_image(path: str, hex_id: str) -> str | None:
    """An image object (pack.image): a regular file whose fs-verity digest is its name."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        digest = digest_file(path).hex()
    except OSError as err:
        return f"unreadable: {err.strerror}"
    if digest != hex_id:
        return f"image changed: fs-verity digest is {digest}"
    return None


def _check_meta_object(path: str, hex_id: str, kind: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        return f"unreadable: {err.strerror}"
    got = hashlib.sha256(data).hexdigest()
    if got != hex_id:
        return f"bytes hash to {got}"
    try:
        (decode_tree if kind == "tree" else decode_commit)(data)
    except FormatError as err:
        return f"does not parse: {err}"
    return None


MAX_WORKERS = 4
PARALLEL_MIN_OBJECTS = 256  # below this, forking costs more than it saves
READ_AHEAD = 16  # objects a worker asks the kernel to read ahead of the one it checks
PROGRESS_SECONDS = 0.2


def _check_object(obj: StoredObject) -> tuple[str | None, int]:
    """(problem or None, bytes of content checked) for one object on disk."""
    if not obj.kind:
        return None, 0
    if obj.kind == "file":
        try:
            size = os.lstat(obj.path).st_size
        except OSError as err:
            return f"unreadable: {err.strerror}", 0
        return _check_file(obj.path, obj.id, obj.meta_key), size
    if obj.kind == "image":
        try:
            size = os.lstat(obj.path).st_size
        except OSError as err:
            return f"unreadable: {err.strerror}", 0
        return _check_image(obj.path, obj.id), size
    return _check_meta_object(obj.path, obj.id, obj.kind), 0


def _check_share(stored: Sequence[StoredObject], share: range, counts: SharedCounts | None = None,
                 slot: int = 0) -> list[tuple[str | None, int]]:
    """``_check_object`` of each object at ``share``, reading the next ones ahead meanwhile."""
    out = []
    checked = 0
    for ahead in share[:READ_AHEAD]:
        read_ahead(stored[ahead].path)
    for position, index in enumerate(share):
        if position + READ_AHEAD < len(share):
            read_ahead(stored[share[position + READ_AHEAD]].path)
        out.append(_check_object(stored[index]))
        checked += out[-1][1]
        if counts is not None:
            counts.set(slot, position + 1, checked)
    return out


def _check_all(stored: Sequence[StoredObject], progress: Progress | None
               ) -> list[tuple[str | None, int]]:
    """Every object's (problem, bytes), in order: objects are independent, so with enough
    of them each of a few forked workers checks every n-th one (threads would share one core
    for hashing and fight over the GIL at every read)."""
    n = worker_count(MAX_WORKERS)
    if n < 2 or len(stored) < PARALLEL_MIN_OBJECTS:
        here = []
        for index in range(len(stored)):
            here.append(_check_object(stored[index]))
            if progress and (index % 256 == 0 or index == len(stored) - 1):
                progress(index + 1, len(stored))
        return here
    counts = SharedCounts(n)
    shares = [range(slot, len(stored), n) for slot in range(n)]
    try:
        workers = [Forked(_check_share, stored, share, counts, slot, failure=_worker_failed)
                   for slot, share in enumerate(shares)]
        tick = None if progress is None else lambda: progress(counts.total()[0], len(stored))
        done = collect(workers, tick, PROGRESS_SECONDS)
    finally:
        counts.close()
    out: list[tuple[str | None, int]] = [(None, 0)] * len(stored)
    for share, results in zip(shares, done, strict=True):
        for index, result in zip(share, results, strict=True):
            out[index] = result
    if progress and stored:
        progress(len(stored), len(stored))
    return out


def _worker_failed(message: str) -> SealtreeError:
    return SealtreeError(f"an fsck worker failed: {message}")


def fsck(repo: Repository, progress: Progress | None = None,
         extra_roots: Iterable[tuple[str, RawId]] = ()) -> FsckReport:
    """Recompute every object's digest and check what every ref (and extra root) reaches."""
    report = FsckReport()
    bad_bundled = _check_bundles(repo, report)
    stored = list(repo.objects.iter_objects())
    bad: dict[str, str] = {}
    for obj, (problem, size) in zip(stored, _check_all(stored, progress), strict=True):
        if not obj.kind:
            report.problems.append(Problem("stray", "", obj.path, "not an object file"))
            continue
        report.objects += 1
        report.bytes += size
        if problem:
            bad[obj.path] = problem
    roots = _ref_roots(repo, report) + list(extra_roots)
    report.refs = len(roots)
    named = _check_reachable(repo, roots, bad, bad_bundled, report)
    for path, message in sorted(bad.items()):
        if path not in named:
            name = os.path.basename(path)
            report.problems.append(Problem("corrupt", os.path.basename(os.path.dirname(path))
                                           + name.split(".")[0], path, message))
    for key, (bundle, message) in sorted(bad_bundled.items()):
        if key not in named:
            report.problems.append(Problem("corrupt", key[1].hex(), bundle, message))
    return report


BundleKey = tuple[int, bytes, bytes]  # kind code, id, meta key


def _check_bundles(repo: Repository, report: FsckReport) -> dict[BundleKey, tuple[str, str]]:
    """Check every bundle; a problem with a whole bundle (or a file in ``bundles/`` that is
    not one) is recorded here, and each bad record returned: key -> (bundle, problem)."""
    bad: dict[BundleKey, tuple[str, str]] = {}
    directory = repo.layout.bundles
    for name in bundle_names(directory):
        path = os.path.join(directory, name)
        if not NAME.fullmatch(name):
            report.problems.append(Problem("stray", "", path, "not a bundle file"))
            continue
        for record, problem in check_bundle(path):
            if record is None:
                report.problems.append(Problem("corrupt", "", path, problem or ""))
                continue
            report.objects += 1
            report.bytes += record.size
            if problem is not None:
                code = TREE if record.kind == "tree" else FILE
                bad.setdefault((code, bytes(record.id), record.meta_key),
                               (path, f"{problem} (record at offset {record.offset})"))
    return bad


def _ref_roots(repo: Repository, report: FsckReport) -> list[tuple[str, RawId]]:
    """Every readable ref as a root; each bad one (a name or content that is not a ref's)
    a "corrupt" problem, so that one bad ref does not stop the check of the others."""
    roots = []
    for name in repo.refs.names():
        try:
            commit = repo.refs.read(name)
        except RefError as err:  # bad name or content
            report.problems.append(Problem("corrupt", "", os.path.join(repo.refs.root, name),
                                           f"ref {show(name)}: {err.detail()}"))
            continue
        if commit is not None:
            roots.append((f"ref {name}", commit))
    return roots


def _check_reachable(repo: Repository, roots: Sequence[tuple[str, RawId]], bad: dict[str, str],
                     bad_bundled: dict[BundleKey, tuple[str, str]], report: FsckReport
                     ) -> set[str | BundleKey]:
    """Record a problem for every object the roots reach that is missing or corrupt; return
    the object files and bundle records so named (their problem is not reported again
    without its tree path)."""
    named: set[str | BundleKey] = set()
    for reached in reachable(repo.objects, roots, history=False):
        where = reached.label + (f":{show(reached.where)}" if reached.where else "")
        problem = bad.get(reached.file)
        if reached.kind != "file":
            tree_key = (TREE, bytes(reached.object_id), NO_META_KEY)
            if reached.kind == "tree" and tree_key in bad_bundled:
                named.add(tree_key)
            if problem is not None:
                message = f"{reached.kind} object {problem}"
            elif isinstance(reached.error, ObjectMissing):
                message = f"{reached.kind} object is missing"
            elif reached.error is not None:
                message = reached.error.detail()
                if reached.bundle and reached.error.path == reached.bundle:
                    message = f"in bundle {show(reached.bundle)}: {message}"
            else:
                continue
            kind = "missing" if isinstance(reached.error, ObjectMissing) else "corrupt"
        elif problem is not None:
            kind, message = "corrupt", problem
        elif not os.path.exists(reached.file):
            meta_key = bytes.fromhex(os.path.basename(reached.file).split(".")[1])
            key = (FILE, bytes(reached.object_id), meta_key)
            if not reached.bundle:
                kind, message = "missing", "file object is missing"
            elif key in bad_bundled:
                bundle, bundle_problem = bad_bundled[key]
                kind, message = "corrupt", f"in bundle {show(bundle)}: {bundle_problem}"
                named.add(key)
            else:
                continue
        else:
            continue
        report.problems.append(Problem(kind, to_hex(reached.object_id), where, message))
        named.add(reached.file)
    return named
