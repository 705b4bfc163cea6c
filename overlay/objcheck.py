"""Checking the large objects a deployment uses against the signed manifest.

fs-verity covers content only, so each object is checked twice over:

- inode metadata, on the open file: a regular file of the manifest's size,
  mode, uid, gid and xattrs; and, where a deploy directory is given, its
  entry is the very inode of the object (a hardlink, not a copy or another
  object);
- content: the kernel-measured fs-verity digest where the filesystem has
  fs-verity on the file (enabling it first where it can and ``enable`` is set),
  otherwise, if the policy allows, the fs-verity digest computed in userspace
  over the whole file.  Policy ``kernel`` fails closed where the kernel
  cannot measure.

Userspace digests are the slow part (every byte is read and hashed).  Python
threads do not help (the per-block loop holds the GIL), so the work is split
by size over forked worker processes, each one asking the kernel to read its
files ahead (``POSIX_FADV_WILLNEED``) from a helper thread while it hashes.
Every failure is a ``VerificationError`` naming the tree path and the object.
"""

from __future__ import annotations

import enum
import errno
import hmac
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from store import kverity, xattrs
from store.errors import VerificationError, VerityError, VerityUnsupported
from store.fsverity import VerityHasher
from store.ids import RawId, to_hex
from store.model import Meta

from .forked import Forked

PARALLEL_MIN_BYTES = 16 << 20  # below this, forking costs more than it saves
MAX_WORKERS = 8
READ_CHUNK = 256 << 10  # a multiple of the 4 KiB block, below fsverity.PARALLEL_MIN


class Policy(enum.Enum):
    """How object content is verified (``--verify``)."""

    KERNEL = "kernel"  # kernel-measured fs-verity digest or nothing: fails closed
    USERSPACE = "userspace"  # always a userspace digest of the whole file
    AUTO = "auto"  # the kernel's where the filesystem has fs-verity, else userspace


@dataclass(frozen=True, slots=True)
class LargeFile:
    """A large file of the tree and where its object (and deploy-dir link) should be."""

    path: bytes  # in the tree, ``a/b``
    meta: Meta
    size: int
    digest: RawId
    obj: str  # the object file in the repository
    link: str | None = None  # its hardlink in the deploy directory, when checking one


@dataclass
class CheckReport:
    files: int = 0
    bytes: int = 0
    kernel: int = 0  # digests measured by the kernel
    userspace: int = 0  # digests computed here
    enabled: int = 0  # objects fs-verity was enabled on


def show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


class _Problem(Exception):
    """One object failed; turned into a VerificationError naming it."""


@dataclass(frozen=True)
class Verity:
    """The kernel operations, replaceable in tests (a filesystem with fs-verity)."""

    measure_fd: Callable[[int, str], bytes | None] = kverity.measure_fd
    enable: Callable[[str], bool] = kverity.enable


KERNEL = Verity()


def _open_object(item: LargeFile) -> tuple[int, os.stat_result]:
    """Open the object read-only (no symlink, no FIFO hang) and check its identity and metadata."""
    if item.link is not None:
        try:
            link_st = os.lstat(item.link)
        except FileNotFoundError:
            raise _Problem("missing from the deploy directory") from None
        if not stat.S_ISREG(link_st.st_mode):
            raise _Problem("is not a regular file in the deploy directory")
    try:
        fd = os.open(item.obj, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Problem("object is missing") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _Problem("object is a symlink") from None
        raise _Problem(f"object cannot be opened: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Problem("object is not a regular file")
        if item.link is not None and (link_st.st_dev, link_st.st_ino) != (st.st_dev, st.st_ino):
            raise _Problem("the deploy directory entry is not a hardlink to its object "
                           "(swapped or copied)")
        _check_meta(fd, st, item)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _check_meta(fd: int, st: os.stat_result, item: LargeFile) -> None:
    want = item.meta
    if st.st_size != item.size:
        raise _Problem(f"size is {st.st_size}, the manifest says {item.size}")
    mode = stat.S_IMODE(st.st_mode)
    if mode != want.mode:
        raise _Problem(f"mode is {mode:#o}, the manifest says {want.mode:#o}")
    if (st.st_uid, st.st_gid) != (want.uid, want.gid):
        raise _Problem(f"owner is {st.st_uid}:{st.st_gid}, the manifest says {want.uid}:{want.gid}")
    got = xattrs.read(fd)
    if got != want.xattrs:
        have = sorted(n.decode(errors="backslashreplace") for n, _ in got)
        need = sorted(n.decode(errors="backslashreplace") for n, _ in want.xattrs)
        detail = f"names {have}, the manifest says {need}" if have != need else "values differ"
        raise _Problem(f"xattrs differ from the manifest: {detail}")


def _compare(item: LargeFile, got: bytes, how: str) -> None:
    if not hmac.compare_digest(got, item.digest):
        raise _Problem(f"content changed: {how} fs-verity digest is {got.hex()}, "
                       f"the manifest says {to_hex(item.digest)}")


def _kernel_digest(fd: int, st: os.stat_result, item: LargeFile, verity: Verity, enable: bool,
                   report: CheckReport, unsupported: set[int]) -> bytes | None:
    """The kernel's digest of the object, enabling fs-verity first if asked; None if unsupported.

    Whether the kernel can measure at all is a property of the filesystem
    (``st_dev``): once the measure ioctl says "not supported", the other
    objects on that filesystem go straight to the userspace digest without
    an ioctl each.
    """
    if st.st_dev in unsupported:
        return None
    try:
        measured = verity.measure_fd(fd, item.obj)
    except VerityUnsupported:  # the measure ioctl itself: the filesystem has no fs-verity
        unsupported.add(st.st_dev)
        return None
    except VerityError as err:
        raise _Problem(f"fs-verity: {err}") from err
    try:
        if measured is None and enable:
            if verity.enable(item.obj):
                report.enabled += 1
            measured = verity.measure_fd(fd, item.obj)
    except VerityUnsupported:  # enabling can be refused for one file (ext4: no extents)
        return None
    except VerityError as err:
        raise _Problem(f"fs-verity: {err}") from err
    return measured


def _digest_file(path: str, dev_ino: tuple[int, int], buf: bytearray) -> bytes:
    """Userspace fs-verity digest of ``path``, which must still be inode ``dev_ino``.

    Reads into ``buf``, reused for every file: a fresh multi-MiB buffer per file
    costs more in page faults than hashing a small file.  ``buf`` is smaller
    than store.fsverity's threading threshold, so each worker hashes on its own
    core and the parallelism is the workers'.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != dev_ino:
            raise _Problem("object replaced while it was being checked")
        hasher = VerityHasher()
        view = memoryview(buf)
        while n := os.readv(fd, [buf]):
            hasher.update(view[:n])
        return hasher.digest()
    finally:
        os.close(fd)


def check_objects(items: Sequence[LargeFile], policy: Policy = Policy.AUTO, *, enable: bool = False,
                  workers: int | None = None, verity: Verity = KERNEL) -> CheckReport:
    """Check every item; raise VerificationError for the first bad one (in ``items`` order).

    ``enable``: turn fs-verity on where the filesystem can and it is off (deploy).
    """
    with start_checks(items, policy, enable=enable, workers=workers, verity=verity) as pending:
        return pending.wait()


def start_checks(items: Sequence[LargeFile], policy: Policy = Policy.AUTO, *, enable: bool = False,
                 workers: int | None = None, verity: Verity = KERNEL) -> PendingCheck:
    """``check_objects`` in two halves, so the caller can work while digests are computed.

    Metadata and kernel measurements are checked now; the userspace digests,
    when there is enough to hash, run in worker processes until ``wait()``.
    Use the result as a context manager: leaving it stops the workers.
    """
    report = CheckReport(files=len(items))
    problems: dict[int, str] = {}
    hashing: list[tuple[int, tuple[int, int]]] = []  # (index, (dev, ino)) to digest in userspace
    unsupported: set[int] = set()  # st_dev of filesystems without fs-verity
    identities: list[tuple[int, int] | None] = [None] * len(items)
    for index, item in enumerate(items):
        report.bytes += item.size
        try:
            fd, st = _open_object(item)
            identities[index] = (st.st_dev, st.st_ino)
            try:
                measured = None
                if policy is not Policy.USERSPACE or enable:
                    measured = _kernel_digest(fd, st, item, verity, enable, report, unsupported)
                if measured is not None and policy is not Policy.USERSPACE:
                    _compare(item, measured, "the kernel-measured")
                    report.kernel += 1
                elif policy is Policy.KERNEL:
                    raise _Problem("the kernel cannot measure its fs-verity digest here "
                                   "(filesystem without fs-verity, or verity not enabled) and "
                                   "--verify kernel allows nothing else")
                else:
                    hashing.append((index, (st.st_dev, st.st_ino)))
            finally:
                os.close(fd)
        except _Problem as problem:
            problems[index] = str(problem)
    pending = PendingCheck(items, report, problems, hashing)
    pending.identities = identities
    if not problems:  # a bad object already: fail at wait() without hashing anything
        pending.start(workers)
    return pending


class PendingCheck:
    """Userspace digests under way (see ``start_checks``)."""

    def __init__(self, items: Sequence[LargeFile], report: CheckReport, problems: dict[int, str],
                 hashing: list[tuple[int, tuple[int, int]]]) -> None:
        self.items = items
        self.report = report
        self.problems = problems
        self.hashing = hashing
        # (st_dev, st_ino) of each object as checked: what a hardlink to it must be.
        self.identities: list[tuple[int, int] | None] = [None] * len(items)
        self.children: list[Forked] = []  # digest workers not yet collected
        self.forked = False

    def start(self, workers: int | None) -> None:
        total = sum(self.items[i].size for i, _ in self.hashing)
        n = workers if workers is not None else min(os.cpu_count() or 1, MAX_WORKERS)
        n = max(1, min(n, len(self.hashing)))
        if n == 1 or total < PARALLEL_MIN_BYTES:
            return  # hashed in this process by wait()
        self.forked = True
        for share in _share_out(self.items, self.hashing, n):
            self.children.append(Forked(_run_share, self.items, share, failure=_worker_failed))

    def __enter__(self) -> PendingCheck:
        return self

    def __exit__(self, *exc: object) -> None:
        while self.children:
            self.children.pop().cancel()

    def wait(self) -> CheckReport:
        """Collect the digests and raise VerificationError for the first bad object."""
        results: dict[int, Result] = {}
        if self.forked:
            while self.children:
                results.update(self.children.pop(0).wait())
        elif not self.problems:
            results = _run_share(self.items, self.hashing)
        problems = self.problems
        for index, result in results.items():
            if isinstance(result, str):
                problems[index] = result
                continue
            try:
                _compare(self.items[index], result, "the userspace")
                self.report.userspace += 1
            except _Problem as problem:
                problems[index] = str(problem)
        if problems:
            first = min(problems)
            item = self.items[first]
            more = f" (and {len(problems) - 1} more bad objects)" if len(problems) > 1 else ""
            where = f"{show(item.path)}: {problems[first]} (object {item.obj})"
            raise VerificationError(where + more, path=show(item.path), object_id=to_hex(item.digest))
        return self.report


# -- userspace digests in parallel ----------------------------------------------------------

Result = bytes | str  # a digest, or why there is none


def _share_out(items: Sequence[LargeFile], jobs: Sequence[tuple[int, tuple[int, int]]], n: int
               ) -> list[list[tuple[int, tuple[int, int]]]]:
    """Split jobs into ``n`` shares of about equal bytes (largest first, to the lightest share)."""
    shares: list[list[tuple[int, tuple[int, int]]]] = [[] for _ in range(n)]
    loads = [0] * n
    for job in sorted(jobs, key=lambda j: items[j[0]].size, reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(job)
        loads[lightest] += items[job[0]].size
    return shares


def _prefetch(paths: list[str]) -> None:
    """Ask the kernel to read these files ahead, in the order they will be hashed."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _run_share(items: Sequence[LargeFile], share: Sequence[tuple[int, tuple[int, int]]]
               ) -> dict[int, Result]:
    # Hash small files first: the prefetcher then has a head start on the large ones.
    ordered = sorted(share, key=lambda j: items[j[0]].size)
    if len(ordered) > 1:
        threading.Thread(target=_prefetch, args=([items[i].obj for i, _ in ordered],),
                         daemon=True).start()
    out: dict[int, Result] = {}
    buf = bytearray(READ_CHUNK)
    for index, dev_ino in ordered:
        try:
            out[index] = _digest_file(items[index].obj, dev_ino, buf)
        except _Problem as problem:
            out[index] = str(problem)
        except OSError as err:
            out[index] = f"object unreadable: {err.strerror}"
    return out


def _worker_failed(message: str) -> VerificationError:
    return VerificationError(f"a digest worker failed: {message}")
