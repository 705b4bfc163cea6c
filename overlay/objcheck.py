"""Checking the large objects a deployment uses against the signed manifest.

fs-verity covers content only, so each object is checked twice over:

- inode metadata, on the open file: a regular file of the manifest's size,
  mode, uid, gid and xattrs; and, where a farm is given, its entry is the
  very inode of the object (a hardlink, not a copy or another object);
- content: the kernel-measured fs-verity digest where the filesystem has
  fs-verity on the file (enabling it first where it can and ``enable`` is set),
  otherwise, if the policy allows, the fs-verity digest computed in userspace
  over the whole file.  Policy ``kernel`` fails closed where the kernel
  cannot measure.

Userspace digests are the slow part (every byte is read and hashed), and on
a cold cache so is opening thousands of inodes.  Python threads do not help
(the per-block loop holds the GIL), so the objects are split by size over
forked worker processes.  Each worker checks one object at a time on one open
file descriptor (identity, metadata, then content, so nothing can swap the
file in between); once it has a digest to compute, a helper thread asks the
kernel to read the rest ahead (``POSIX_FADV_WILLNEED``).  Where the kernel
measures, no content is read at all.

Every failure names the tree path (``path``) and the object (``file``): an
``ObjectMismatch``, or a ``FarmMismatch`` when the farm's entry is what is wrong.
"""

from __future__ import annotations

import enum
import errno
import hmac
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO

from store import kverity, xattrs
from store.errors import FarmMismatch, ObjectMismatch, VerificationError, VerityError, VerityUnsupported
from store.fsverity import digest_fd
from store.ids import RawId, to_hex
from store.model import Meta
from store.names import show
from store.record import Frozen, Mutable

if TYPE_CHECKING:
    from store.forked import Forked

# an object: read-only, no symlink followed, no FIFO waited on
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PARALLEL_MIN_BYTES = 16 << 20  # below this, forking costs more than it saves
MAX_WORKERS = 8


class Policy(enum.Enum):
    """How object content is verified (``--verify``)."""

    KERNEL = "kernel"  # kernel-measured fs-verity digest or nothing: fails closed
    USERSPACE = "userspace"  # always a userspace digest of the whole file
    AUTO = "auto"  # the kernel's where the filesystem has fs-verity, else userspace


class LargeFile(Frozen):
    """A large file of the tree and where its object (and its link in the farm) should be."""

    __slots__ = ("path", "meta", "size", "digest", "obj", "link")
    _fields = __slots__
    path: bytes  # in the tree, ``a/b``; b"" for an object of the pack's image object list
    meta: Meta | None  # None: an image list's object, whose inode metadata is not checked
    size: int
    digest: RawId
    obj: str  # the object file in the repository
    link: str | None  # its hardlink in the farm, when checking one

    def __init__(self, path: bytes, meta: Meta | None, size: int, digest: RawId, obj: str,
                 link: str | None = None) -> None:
        setattr_ = object.__setattr__  # one per large file of a deployment: not _set_fields
        setattr_(self, "path", path)
        setattr_(self, "meta", meta)
        setattr_(self, "size", size)
        setattr_(self, "digest", digest)
        setattr_(self, "obj", obj)
        setattr_(self, "link", link)


class CheckReport(Mutable):
    __slots__ = ("files", "bytes", "kernel", "userspace", "enabled")
    _fields = __slots__

    def __init__(self, files: int = 0, bytes: int = 0, kernel: int = 0, userspace: int = 0,
                 enabled: int = 0) -> None:
        self.files = files
        self.bytes = bytes
        self.kernel = kernel  # digests measured by the kernel
        self.userspace = userspace  # digests computed here
        self.enabled = enabled  # objects fs-verity was enabled on


class _Problem(Exception):
    """One object failed; turned into an ObjectMismatch (a FarmMismatch with ``farm``) naming it."""

    def __init__(self, message: str, *, farm: bool = False) -> None:
        super().__init__(message)
        self.farm = farm


class Verity(Frozen):
    """The kernel operations, replaceable in tests (a filesystem with fs-verity)."""

    __slots__ = ("measure_fd", "enable")
    _fields = __slots__
    measure_fd: Callable[[int, str], bytes | None]
    enable: Callable[[str], bool]

    def __init__(self, measure_fd: Callable[[int, str], bytes | None] = kverity.measure_fd,
                 enable: Callable[[str], bool] = kverity.enable) -> None:
        self._set_fields(measure_fd, enable)


KERNEL = Verity()


def _open_object(item: LargeFile, inode_meta: bool = True) -> tuple[int, os.stat_result]:
    """Open the object read-only (no symlink, no FIFO hang) and check its identity and metadata
    (``inode_meta`` False: its size only, for a metacopy stub carries the rest)."""
    if item.link is not None:
        try:
            link_st = os.lstat(item.link)
        except FileNotFoundError:
            raise _Problem("missing from the farm", farm=True) from None
        if not stat.S_ISREG(link_st.st_mode):
            raise _Problem("is not a regular file in the farm", farm=True)
    try:
        fd = os.open(item.obj, _OPEN_FLAGS)
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
            raise _Problem("the farm's entry is not a hardlink to its object "
                           "(swapped or copied)", farm=True)
        if inode_meta:
            _check_inode_against_manifest(fd, st, item)
        elif st.st_size != item.size:
            raise _Problem(f"size is {st.st_size}, the manifest says {item.size}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_object_file(path: str | bytes) -> BinaryIO:
    """An object file opened for its bytes the way the checks open it (no symlink followed,
    no FIFO waited on): ObjectMismatch naming it unless it is a regular file.  For what reads
    an object while its check may still be under way (the deployment's /etc copy), which is
    published only once the check has passed."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        raise ObjectMismatch(f"object cannot be opened: {err.strerror}",
                             path=os.fsdecode(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ObjectMismatch("object is not a regular file", path=os.fsdecode(path))
    return os.fdopen(fd, "rb")


def _check_inode_against_manifest(fd: int, st: os.stat_result, item: LargeFile) -> None:
    """The object's size, mode, owner and xattrs (exactly, none more) are the manifest's."""
    want = item.meta
    if want is None:  # an image list's object: its stubs carry the metadata (metacopy layout)
        raise _Problem("has no metadata in the manifest to check its inode against")
    if st.st_size != item.size:
        raise _Problem(f"size is {st.st_size}, the manifest says {item.size}")
    mode = stat.S_IMODE(st.st_mode)
    if mode != want.mode:
        raise _Problem(f"mode is {mode:#o}, the manifest says {want.mode:#o}")
    if (st.st_uid, st.st_gid) != (want.uid, want.gid):
        raise _Problem(f"owner is {st.st_uid}:{st.st_gid}, the manifest says {want.uid}:{want.gid}")
    got = xattrs.read(fd)
    if got != want.xattrs:
        have = ", ".join(show(n) for n, _ in got) or "none"
        need = ", ".join(show(n) for n, _ in want.xattrs) or "none"
        detail = f"names [{have}], the manifest says [{need}]" if have != need else "values differ"
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


def check_objects(items: Sequence[LargeFile], policy: Policy = Policy.AUTO, *, enable: bool = False,
                  workers: int | None = None, verity: Verity = KERNEL,
                  inode_meta: bool = True) -> CheckReport:
    """Check every item; raise VerificationError for the first bad one (in ``items`` order).

    ``enable``: turn fs-verity on where the filesystem can and it is off (deploy).
    ``inode_meta`` False (metacopy layout, where the stub carries mode, owner and
    xattrs): an object's size and content are checked, not its other metadata.
    """
    with start_checks(items, policy, enable=enable, workers=workers, verity=verity,
                      inode_meta=inode_meta) as pending:
        return pending.wait()


def start_checks(items: Sequence[LargeFile], policy: Policy = Policy.AUTO, *, enable: bool = False,
                 workers: int | None = None, verity: Verity = KERNEL,
                 inode_meta: bool = True) -> PendingCheck:
    """``check_objects`` in two halves, so the caller can work while the objects are checked.

    With enough to hash, every check (metadata, kernel measurement, userspace
    digest) runs in worker processes until ``wait()``; otherwise all of it is
    done here and now.  Use the result as a context manager: leaving it stops
    the workers.
    """
    pending = PendingCheck(items)
    pending.start(_Job(policy, enable, verity, inode_meta), workers)
    return pending


class _Job(Frozen):
    """How each object is checked (what a worker needs besides the items)."""

    __slots__ = ("policy", "enable", "verity", "inode_meta", "measure_only")
    _fields = __slots__
    policy: Policy
    enable: bool
    verity: Verity
    inode_meta: bool
    measure_only: bool  # policy kernel, no inode metadata: ``_measure_share`` first

    def __init__(self, policy: Policy, enable: bool, verity: Verity, inode_meta: bool = True,
                 measure_only: bool | None = None) -> None:
        if measure_only is None:
            measure_only = policy is Policy.KERNEL and not inode_meta
        self._set_fields(policy, enable, verity, inode_meta, measure_only)


class _ShareResult(Mutable):
    """What checking a share of the items found."""

    __slots__ = ("report", "problems", "identities")
    _fields = __slots__

    def __init__(self, report: CheckReport, problems: dict[int, tuple[str, bool]],
                 identities: dict[int, tuple[int, int]]) -> None:
        self.report = report
        self.problems = problems  # index -> what is wrong with that object, in the farm?
        self.identities = identities  # index -> (st_dev, st_ino) as checked


class PendingCheck:
    """Object checks under way (see ``start_checks``)."""

    def __init__(self, items: Sequence[LargeFile]) -> None:
        self.items = items
        self._done: list[_ShareResult] = []
        self.children: list[Forked] = []  # workers not yet collected
        # (st_dev, st_ino) of each object as checked, once ``wait()`` has returned: what a
        # hardlink to it must be.
        self.identities: list[tuple[int, int] | None] = [None] * len(items)
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None

    def start(self, job: _Job, workers: int | None) -> None:
        # Under policy kernel no content is read here (the kernel measures; what enabling
        # fs-verity reads, it reads in the kernel): a few system calls per object are done
        # sooner by one process than by several forked ones.
        if job.measure_only:
            # Their time is the disk's, on a cold cache (each object's inode looked up), and
            # the interpreter lock is released in each call: one thread does them while the
            # caller goes on (mounts the image, copies the state), until ``wait()``.
            self._thread = threading.Thread(target=self._check_here, args=(job,), daemon=True,
                                            name="object checks")
            self._thread.start()
            return
        total = 0 if job.policy is Policy.KERNEL else sum(item.size for item in self.items)
        n = workers if workers is not None else (os.cpu_count() or 1)
        n = min(n, MAX_WORKERS)
        n = max(1, min(n, len(self.items)))
        if n == 1 or total < PARALLEL_MIN_BYTES:
            self._done.append(_check_share(self.items, range(len(self.items)), job))
            return
        # Imported only when forking: the pickling and pipes of worker processes are not
        # needed by a check made here (the metacopy layout under policy kernel, small trees).
        from store.forked import Forked  # noqa: PLC0415

        for share in _share_out(self.items, n):
            self.children.append(Forked(_check_share, self.items, share, job, failure=_worker_failed))

    def __enter__(self) -> PendingCheck:
        return self

    def _check_here(self, job: _Job) -> None:
        try:
            self._done.append(_check_share(self.items, range(len(self.items)), job))
        except BaseException as err:  # noqa: BLE001 - raised again by wait(), in the caller
            self._thread_error = err

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._thread_error is not None:
            raise self._thread_error

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:  # a few system calls per object: finished, not stopped
            self._thread.join()
        while self.children:
            self.children.pop().cancel()

    def failed(self) -> bool:
        """Whether a bad object is known already (before ``wait()``)."""
        return any(done.problems for done in self._done)

    def wait(self) -> CheckReport:
        """Collect every check; raise VerificationError for the first bad object."""
        self._join()
        while self.children:
            self._done.append(self.children.pop(0).wait())
        report = CheckReport(files=len(self.items), bytes=sum(item.size for item in self.items))
        problems: dict[int, tuple[str, bool]] = {}
        for done in self._done:
            report.kernel += done.report.kernel
            report.userspace += done.report.userspace
            report.enabled += done.report.enabled
            problems.update(done.problems)
            for index, identity in done.identities.items():
                self.identities[index] = identity
        if problems:
            first = min(problems)
            item = self.items[first]
            message, in_farm = problems[first]
            more = f" (and {len(problems) - 1} more bad objects)" if len(problems) > 1 else ""
            kind = FarmMismatch if in_farm else ObjectMismatch
            raise kind(f"{message} (object {show(item.obj)}){more}", path=item.path,
                       object_id=to_hex(item.digest), file=item.obj)
        return report


# -- checking a share of the objects (in a worker process, or here) ---------------------------

def _share_out(items: Sequence[LargeFile], n: int) -> list[list[int]]:
    """Split the items into ``n`` shares of about equal bytes (largest first, to the lightest)."""
    shares: list[list[int]] = [[] for _ in range(n)]
    loads = [0] * n
    for index in sorted(range(len(items)), key=lambda i: items[i].size, reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(index)
        loads[lightest] += items[index].size
    return shares


def _prefetch(paths: list[str]) -> None:
    """Ask the kernel to read these files ahead, in the order they will be checked."""
    from store.readahead import read_ahead  # noqa: PLC0415 - only where digests are computed

    for path in paths:
        read_ahead(path)


def _check_share(items: Sequence[LargeFile], share: Sequence[int], job: _Job) -> _ShareResult:
    """Check the objects at ``share``: identity and metadata, then content, each on one open fd.

    Small files first.  From the first object whose digest is computed here on,
    a helper thread reads the rest ahead (where the kernel measures, nothing
    needs the content).
    """
    if job.measure_only:
        return _measure_share(items, share, job)
    ordered = sorted(share, key=lambda i: items[i].size)
    result = _ShareResult(CheckReport(), {}, {})
    unsupported: set[int] = set()  # st_dev of filesystems without fs-verity
    reading_ahead = False
    for position, index in enumerate(ordered):
        item = items[index]
        try:
            fd, st = _open_object(item, job.inode_meta)
            try:
                result.identities[index] = (st.st_dev, st.st_ino)
                if _measured_by_kernel(fd, st, item, job, result.report, unsupported):
                    continue
                if not reading_ahead and position + 1 < len(ordered):
                    reading_ahead = True
                    threading.Thread(target=_prefetch, daemon=True,
                                     args=([items[i].obj for i in ordered[position + 1:]],)).start()
                _compare(item, digest_fd(fd)[0], "the userspace")  # fd at offset 0: only fstat-ed
                result.report.userspace += 1
            finally:
                os.close(fd)
        except _Problem as problem:
            result.problems[index] = (str(problem), problem.farm)
        except OSError as err:
            result.problems[index] = (f"object unreadable: {err.strerror}", False)
    return result


def _measure_share(items: Sequence[LargeFile], share: Sequence[int], job: _Job) -> _ShareResult:
    """``_check_share`` where only the kernel measures and nothing else of the inode is checked
    but its type and size (the metacopy layout under policy ``kernel``, the path of a deploy on a
    system with fs-verity): per object one open, fstat, measure and close, and nothing more.
    An object that is anything but right (missing, another size or digest, fs-verity off) is
    checked again by ``_check_share``'s way, which enables fs-verity or says what is wrong."""
    result = _ShareResult(CheckReport(), {}, {})
    measure = job.verity.measure_fd
    identities = result.identities
    again: list[int] = []
    for index in share:
        item = items[index]
        if item.link is not None:  # a farm's link to check too: not this way
            again.append(index)
            continue
        try:
            fd = os.open(item.obj, _OPEN_FLAGS)
        except OSError:
            again.append(index)
            continue
        try:
            st = os.fstat(fd)
            measured = (measure(fd, item.obj)
                        if stat.S_ISREG(st.st_mode) and st.st_size == item.size else None)
        except (OSError, VerityError):
            measured = None
        finally:
            os.close(fd)
        if measured is None or not hmac.compare_digest(measured, item.digest):
            again.append(index)
            continue
        identities[index] = (st.st_dev, st.st_ino)
    result.report.kernel = len(share) - len(again)
    if again:
        slow = _Job(job.policy, job.enable, job.verity, job.inode_meta, measure_only=False)
        done = _check_share(items, again, slow)
        result.report.kernel += done.report.kernel
        result.report.enabled += done.report.enabled
        result.problems.update(done.problems)
        identities.update(done.identities)
    return result


def _measured_by_kernel(fd: int, st: os.stat_result, item: LargeFile, job: _Job,
                        report: CheckReport, unsupported: set[int]) -> bool:
    """Check the kernel-measured digest where the policy wants it and the kernel can;
    False: the policy allows a userspace digest instead, and one is needed."""
    measured = None
    if job.policy is not Policy.USERSPACE or job.enable:
        measured = _kernel_digest(fd, st, item, job.verity, job.enable, report, unsupported)
    if measured is not None and job.policy is not Policy.USERSPACE:
        _compare(item, measured, "the kernel-measured")
        report.kernel += 1
        return True
    if job.policy is Policy.KERNEL:
        raise _Problem("the kernel cannot measure its fs-verity digest here "
                       "(filesystem without fs-verity, or verity not enabled) and "
                       "the kernel policy allows nothing else")
    return False


def _worker_failed(message: str) -> VerificationError:
    return VerificationError(f"an object-check worker failed: {message}")
