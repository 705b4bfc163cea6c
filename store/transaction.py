"""Writing objects crash-safely: stage, sync once, publish, then move refs.

Objects are written under ``tmp/staging-*/`` without per-file fsync, by this
process or by forked workers sharing the staging directory (``staged()`` and
``adopt()`` carry what a worker staged back to the parent).  Where an object
is staged depends on whether its ``objects/xx`` directory existed when the
transaction began (one listing of ``objects/``, inherited by the workers, so
every process stages an object at the same path): if it did, flat, object
``xx/rest`` as ``xxrest`` (no ``xx/`` subdirectory to make and remove again:
on a disk filesystem each is a metadata write); if not (a pull into an empty
repository), as ``xx/rest`` in a ``staging/xx/`` made once, which ``publish``
renames whole to ``objects/xx``: one rename for the prefix instead of one per
object, and the directory is made once either way.  On
``commit()`` the filesystem is synced once (syncfs), the staged objects are
renamed into ``objects/`` (whole ``xx/`` directories, or one by one) and the
filesystem is synced again; only then may a
caller move a ref.  A crash before that leaves only a staging directory, which
the next transaction removes; a published object is always complete (a staged
object whose writing failed is removed, so a ``staging/xx/`` holds only
complete objects when it is renamed).  A file
the caller checked elsewhere on the repository's filesystem (a pull's
download in ``tmp/pull/``) is adopted where it is (``adopt_file``): the same
syncs cover it, and an unpublished transaction leaves it for the next pull.
Object writes are idempotent: an object already present is not rewritten (nor
renamed over: a ``staging/xx/`` whose ``objects/xx`` another writer has made and
filled meanwhile is published object by object).  A transaction made with
``bundle=True`` (a pack's import) writes its trees and small files into one bundle
instead (store.bundles), streamed to ``staging/bundle`` as they come; ``publish``
appends its table, and after the first sync renames it into ``bundles/`` under its
SHA-256, before the loose objects: a crash leaves no partial bundle visible.  Objects
present loose or bundled are not written again, whichever way a transaction writes.
A small file whose owner is
the one new files get, and whose mode the umask leaves alone, is created with
its mode (no chown and chmod afterwards; the first one is checked with fstat).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO, Concatenate, ParamSpec, TypeVar

from . import kverity
from .atomic import process_gone
from .bundles import FILE, NO_META_KEY, TREE, BundleIndex, BundleWriter
from .commits import Commit
from .errors import RepositoryError, SourceError
from .fsverity import VerityHasher, digest_bytes
from .ids import RawId
from .inode_meta import apply_meta, apply_xattrs
from .layout import RepoLayout
from .lock import flock, try_flock
from .model import Entry, Meta
from .objects import relative_path
from .remove import remove_tree
from .sparse import Piece, SparseWriter, fd_pieces, is_zero
from .syncfs import syncfs
from .tree import encode_tree, tree_id

SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
IN_MEMORY_MAX = 4 << 20  # files up to this size are read whole, larger ones streamed
COPY_CHUNK = 1 << 20
STAGING_PREFIX = "staging-"
STAGING_LOCK = "lock"  # held by the transaction that owns a staging directory
TRASH_PREFIX = ".trash-"  # a staging directory being removed: nobody uses it
UNLOCKED_GRACE = 60.0

__all__ = ["COPY_CHUNK", "IN_MEMORY_MAX", "Transaction", "clean_stale_staging",
           "disk_full_named", "store_reader"]


def clean_stale_staging(tmp_root: str) -> None:
    """Remove staging directories whose transaction is gone (their lock is free), and the
    trash of finished ones.  One without a lock file yet is a transaction starting (between
    creating it and locking it), unless the process named in it is gone or it is older than
    UNLOCKED_GRACE seconds."""
    for name in os.listdir(tmp_root):
        path = os.path.join(tmp_root, name)
        if name.startswith(TRASH_PREFIX + STAGING_PREFIX):
            with contextlib.suppress(OSError):
                remove_tree(path)
            continue
        if not name.startswith(STAGING_PREFIX):
            continue
        lock = os.path.join(path, STAGING_LOCK)
        try:
            if (not os.path.exists(lock) and not _creator_gone(name)
                    and time.time() - os.lstat(path).st_mtime < UNLOCKED_GRACE):
                continue
        except FileNotFoundError:
            continue
        if try_flock(lock):
            with contextlib.suppress(OSError):
                remove_tree(path)


def _creator_gone(name: str) -> bool:
    """Whether the process that created staging directory ``name`` (``staging-PID-XXXX``) has
    gone; False when the name carries no PID (made by an older version)."""
    pid = name[len(STAGING_PREFIX):].partition("-")[0]
    return pid.isdigit() and process_gone(int(pid))


@contextlib.contextmanager
def disk_full_named(repo_path: str) -> Iterator[None]:
    """Within the block, a full filesystem or quota (ENOSPC, EDQUOT) is a RepositoryError about
    the repository: the user frees space there, whatever file was being written."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise RepositoryError("no space left on device", path=repo_path) from err
        if err.errno == errno.EDQUOT:
            raise RepositoryError("disk quota exceeded", path=repo_path) from err
        raise


P = ParamSpec("P")
R = TypeVar("R")


def _full_disk_named(method: Callable[Concatenate[Transaction, P], R]
                     ) -> Callable[Concatenate[Transaction, P], R]:
    """A Transaction method whose full disk is reported about the repository (as
    ``disk_full_named``, without making a context manager on every call: a pack's
    import calls these thousands of times)."""
    @functools.wraps(method)
    def wrapper(self: Transaction, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                with disk_full_named(self.repo_path):
                    raise
            raise
    return wrapper


class Transaction:
    """Stages objects for one commit; use as a context manager, then ``publish()``."""

    def __init__(self, layout: RepoLayout, *, bundle: bool = False) -> None:
        self.repo_path = layout.root
        self.objects_root = layout.objects
        self.bundles_root = layout.bundles
        clean_stale_staging(layout.tmp)
        with disk_full_named(self.repo_path):
            # The creator's PID in the name: between mkdir and the lock, a directory with
            # no lock file is its creator's if that process still runs.
            self.staging = _make_staging(layout.tmp)
        self._held = contextlib.ExitStack()  # the staging directory's lock, until close()
        try:
            self._held.enter_context(flock(os.path.join(self.staging, STAGING_LOCK), exclusive=True))
        except BaseException:
            remove_tree(self.staging)
            raise
        self._staged: dict[str, str] = {}  # relative object path -> staged path
        self._made_dirs: set[str] = set()  # objects/xx made by this transaction (see made_dirs)
        # objects/xx absent when the transaction began: staged in staging/xx/ (_staging_path)
        self._absent = _absent_prefixes(self.objects_root)
        self._nested_made: set[str] = set()  # the staging/xx this process made or found
        # Files are created with their mode when their owner is the one they get (_created).
        umask = _umask()
        self._umask = 0o7777 if umask is None else umask
        self._dir_mode = 0o777 & ~self._umask  # what os.mkdir gives objects/xx in this process
        if umask is None:
            self._dir_mode = 0o777  # and the umask takes its bits off (create_exactly: known)
        self._created_as: tuple[int, int] | None = None
        if umask is not None and _creates_as_asked(self.staging):
            self._created_as = (os.geteuid(), os.getegid())
        self._check_created = True  # the first file created with its mode is checked
        self._meta_keys: dict[Meta, str] = {}
        self._reserve_lock = threading.Lock()  # add_* may run on several threads
        self._incoming = 0
        # Objects in a bundle (the bundles as the transaction began, and its own): present.
        self._bundled = _bundled_rels(BundleIndex(layout.bundles))
        self._bundle_pid = os.getpid() if bundle else 0  # forked workers stage loose objects
        self._writer: BundleWriter | None = None
        self._encoded: dict[Meta, tuple[bytes, bytes]] = {}  # meta -> (encoding, raw key)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        # Renamed while still locked, so that a process killed while removing it leaves a
        # trash directory (removed by the next writer), never an unlocked staging directory.
        trash = os.path.join(os.path.dirname(self.staging),
                             TRASH_PREFIX + os.path.basename(self.staging))
        with contextlib.suppress(OSError):
            os.rename(self.staging, trash)
        self._held.close()
        with contextlib.suppress(OSError):
            remove_tree(trash)
            remove_tree(self.staging)

    # -- object paths -------------------------------------------------------
    def _file_key(self, meta: Meta) -> str:
        key = self._meta_keys.get(meta)
        if key is None:
            key = self._meta_keys[meta] = meta.object_key()
        return key

    def _file_rel(self, digest: bytes, meta: Meta) -> str:
        h = digest.hex()
        return f"{h[:2]}/{h[2:]}.{self._file_key(meta)}.file"

    def _staging_path(self, rel: str) -> str:
        """Where object ``rel`` (``xx/rest``) is staged: ``xx/rest`` when ``objects/xx`` was
        absent as the transaction began (``publish`` renames the whole ``xx/`` into
        ``objects/``: one rename, not one per object), else ``xxrest``, flat (no ``xx/`` to
        make and remove again).  The same in every worker process (they are forked after
        ``_absent`` is known), so two never stage one object twice."""
        if rel[:2] in self._absent:
            return f"{self.staging}/{rel}"
        return f"{self.staging}/{rel[:2]}{rel[3:]}"

    def _make_nested(self, prefix: str) -> None:
        """Make ``staging/xx`` (a worker process may have made it already)."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(f"{self.staging}/{prefix}", self._dir_mode)
        self._nested_made.add(prefix)

    def _reserve(self, rel: str) -> str | None:
        """The staging path to write object ``rel`` to, or None if it is present or being
        written by another thread: claiming it is atomic, so each object is written once."""
        with self._reserve_lock:
            if rel in self._staged or self._present(rel):
                return None
            staged = self._staged[rel] = self._staging_path(rel)
            prefix = rel[:2]
            if prefix in self._absent and prefix not in self._nested_made:
                try:
                    self._make_nested(prefix)
                except BaseException:
                    del self._staged[rel]
                    raise
        return staged

    def _present(self, rel: str) -> bool:
        """Whether object ``rel`` is in ``objects/``.  An ``xx/`` directory absent when the
        transaction began is not looked into until ``publish`` (a pull into an empty
        repository would look for thousands of objects that cannot be there); one another
        writer makes meanwhile costs at most a needless write: ``publish`` never renames
        over a present object."""
        return rel in self._bundled or (rel[:2] not in self._absent
                                        and os.path.exists(f"{self.objects_root}/{rel}"))

    def _bundling(self) -> bool:
        """Whether this call goes into the bundle: a bundle transaction, in the process that
        made it (a forked worker stages loose objects)."""
        return self._bundle_pid != 0 and self._bundle_pid == os.getpid()

    def _add_to_bundle(self, rel: str, kind: int, raw: bytes, meta_key: bytes, meta: bytes,
                       content: bytes) -> None:
        """Append object ``rel`` to this transaction's bundle unless it is present or staged."""
        with self._reserve_lock:
            if rel in self._staged or self._present(rel):
                return
            if self._writer is None:
                self._writer = BundleWriter(f"{self.staging}/bundle")
            self._writer.add(kind, raw, meta_key, meta, content)
            self._bundled.add(rel)

    def _unreserve(self, rel: str, staged: str) -> None:
        """Give up an object whose writing failed: its partial file is never published."""
        with self._reserve_lock:
            self._staged.pop(rel, None)
        with contextlib.suppress(OSError):
            os.unlink(staged)

    def create_exactly(self) -> None:
        """For a worker process that only stages objects: from now on (umask 0) every file
        whose metadata names the owner this process's new files get is created with its
        mode, whatever the mode (any process does so for modes its umask leaves alone), not
        given owner and mode afterwards (two system calls fewer a file).  Not where new files
        take a directory's group or ACL (``_creates_as_asked``); a file with set-ID or sticky
        bits, and the first file, are checked (``_created``)."""
        if not _creates_as_asked(self.staging):
            self._created_as = None
            return
        if self._umask == 0o7777:  # not known before: os.umask says it
            self._dir_mode = 0o777 & ~os.umask(0)
        os.umask(0)
        self._umask = 0
        self._created_as = (os.geteuid(), os.getegid())
        self._check_created = True

    def _created(self, fd: int, meta: Meta) -> None:
        """Give a file just created with ``meta.mode`` the rest of ``meta``, after checking,
        when it matters, that the kernel made it as asked (else: as ``apply_meta``, and no
        more creating exactly)."""
        if self._check_created or meta.mode & SPECIAL_BITS:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (meta.uid, meta.gid, meta.mode):
                self._created_as = None
                apply_meta(fd, meta)
                return
            self._check_created = False
        apply_xattrs(fd, meta)

    # -- writing ------------------------------------------------------------
    @_full_disk_named
    def add_file_bytes(self, data: bytes, meta: Meta, checked_digest: RawId | None = None) -> RawId:
        """Store a file's content with ``meta``; return its fs-verity digest.  ``checked_digest``:
        the digest of ``data``, which the caller has just computed and checked (a pack's
        inline file), so it is not computed again."""
        digest = RawId(digest_bytes(data)) if checked_digest is None else checked_digest
        if self._bundling():
            encoded = self._encoded.get(meta)
            if encoded is None:
                raw = meta.encode()
                encoded = self._encoded[meta] = (raw, bytes.fromhex(self._file_key(meta)))
            self._add_to_bundle(self._file_rel(digest, meta), FILE, digest, encoded[1], encoded[0], data)
            return digest
        staged = self._reserve(self._file_rel(digest, meta))
        if staged is not None:
            exact = self._created_as == (meta.uid, meta.gid) and not meta.mode & self._umask
            try:
                fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             meta.mode if exact else 0o600)
            except FileExistsError:
                return digest  # a worker process is staging the same object
            try:
                _write_all(fd, data)
                if exact:
                    self._created(fd, meta)
                else:
                    apply_meta(fd, meta)
            except BaseException:
                self._unreserve(self._file_rel(digest, meta), staged)
                raise
            finally:
                os.close(fd)
        return digest

    def add_file_stream(self, src_fd: int, meta: Meta) -> tuple[RawId, int]:
        """Store the rest of an open file, hashing while copying; return (digest, size).
        Its holes (as the filesystem tells them) are neither read nor written."""
        return self.add_file_pieces(fd_pieces(src_fd, bytearray(COPY_CHUNK)), meta)

    @_full_disk_named
    def add_file_pieces(self, pieces: Iterable[Piece], meta: Meta) -> tuple[RawId, int]:
        """Store a file given as pieces (store.sparse: data, or an int for a run of zeros),
        hashing while writing; return (digest, size).  The object is written sparse: runs of
        zeros and all-zero chunks of data take no disk; its digest is that of the content."""
        hasher = VerityHasher()
        with self._reserve_lock:
            self._incoming += 1
            tmp = os.path.join(self.staging, f"incoming-{os.getpid()}-{self._incoming}")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        staged: str | None = None
        renamed = False
        try:
            writer = SparseWriter(out)
            for piece in pieces:
                if isinstance(piece, int):
                    hasher.update_zeros(piece)
                    writer.zeros(piece)
                elif is_zero(piece):
                    hasher.update_zeros(len(piece))
                    writer.zeros(len(piece))
                else:  # data

                    hasher.update(piece)
                    writer.data(piece)
            writer.finish()
            digest = RawId(hasher.digest())
            staged = self._reserve(self._file_rel(digest, meta))
            if staged is None:
                os.unlink(tmp)
            else:
                apply_meta(out, meta)
                os.rename(tmp, staged)  # over the same object if a worker process staged it too
                renamed = True
        finally:
            os.close(out)
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                if staged is not None:
                    self._unreserve(self._file_rel(digest, meta), staged)
        return digest, hasher.size

    def add_file(self, src_fd: int, size: int, meta: Meta) -> tuple[RawId, int]:
        """Store the content of an open file; small files in one read, large ones streamed.

        ``size`` only chooses the method: what is stored is what the read returns.
        """
        if size > IN_MEMORY_MAX:
            return self.add_file_stream(src_fd, meta)
        data = _read_all(src_fd, size)
        return self.add_file_bytes(data, meta), len(data)

    @_full_disk_named
    def add_meta_object(self, kind: str, data: bytes, raw: RawId) -> RawId:
        """Stage a tree or commit object whose id the caller has computed (a tree goes into
        the bundle of a bundle transaction)."""
        if kind == "tree" and self._bundling():
            self._add_to_bundle(relative_path(kind, raw), TREE, raw, NO_META_KEY, b"", data)
        else:
            self._stage_bytes(relative_path(kind, raw), data)
        return raw

    @_full_disk_named
    def add_image(self, data: bytes, digest: RawId) -> None:
        """Stage an EROFS image object (``xx/<62 hex>.image``, mode 0444) whose fs-verity digest
        the caller has computed and checked (pack.image), with fs-verity enabled on it where
        the filesystem can, as it is published."""
        rel = relative_path("image", digest)
        staged = self._stage_bytes(rel, data)
        if staged is None:
            return
        try:
            kverity.enable_where_supported(staged)  # no writer left: the kernel allows it
        except BaseException:
            self._unreserve(rel, staged)
            raise

    def _stage_bytes(self, rel: str, data: bytes) -> str | None:
        """Stage object ``rel`` (mode 0444) holding ``data``; its staged path, None when it
        is present or staged already."""
        staged = self._reserve(rel)
        if staged is None:
            return None
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            _write_all(fd, data)
        except BaseException:
            self._unreserve(rel, staged)
            raise
        finally:
            os.close(fd)
        return staged

    def add_tree(self, entries: Sequence[Entry]) -> RawId:
        data = encode_tree(entries)
        return self.add_meta_object("tree", data, tree_id(data))

    def add_commit(self, commit: Commit) -> RawId:
        return self.add_meta_object("commit", commit.encode(), commit.id())

    # -- objects staged by worker processes -------------------------------------
    def staged(self) -> list[str]:
        """The objects this process has staged (relative paths), for ``adopt`` in the parent."""
        return list(self._staged)

    def adopt(self, rels: Sequence[str], *, flat: bool = False) -> None:
        """Take over objects staged in this transaction's staging directory by a forked worker
        (at their flat staging path) or by a caller (at ``staging/<rel>``, in an ``xx/``
        subdirectory it made: remote.pull's verified downloads; everything it puts there must
        be complete and adopted, since ``publish`` may rename the whole ``xx/``).  ``flat``:
        the caller knows they are all at their staging path (a worker's ``staged()``), which
        is not checked."""
        with self._reserve_lock:
            for rel in rels:
                if rel in self._staged:
                    continue
                flat_path = self._staging_path(rel)
                if flat:
                    self._staged[rel] = flat_path
                    continue
                nested = os.path.join(self.staging, rel)
                self._staged[rel] = nested if not os.path.exists(flat_path) \
                    and os.path.exists(nested) else flat_path

    def made_dirs(self, prefixes: Iterable[str]) -> None:
        """Record that this transaction made the (empty) directories ``objects/xx`` of
        ``prefixes`` (a worker made them while objects were staged): ``publish`` renames into
        them without looking for objects present first."""
        self._made_dirs.update(prefixes)

    def adopt_file(self, path: str, digest: RawId, meta: Meta) -> None:
        """Take over the file at ``path`` as object (``digest``, ``meta``): the caller has
        checked that its content has that fs-verity digest and given the inode that metadata
        (remote.pull's verified downloads).  It stays where it is (on the repository's
        filesystem: ``publish`` syncs that filesystem, then renames it into ``objects/``); a
        transaction that is not published leaves it there.  Removed when the object is
        present or staged already."""
        rel = self._file_rel(digest, meta)
        with self._reserve_lock:
            if rel in self._staged or self._present(rel):
                os.unlink(path)
                return
            self._staged[rel] = path

    # -- publishing -----------------------------------------------------------
    @_full_disk_named
    def publish(self) -> None:
        """Make every staged object durable and visible under ``objects/`` (the bundle, if
        any, under ``bundles/``)."""
        if not self._staged and self._writer is None:
            return
        bundle = None
        if self._writer is not None:
            bundle = (self._writer.path, self._writer.finish())
            self._writer = None
        syncfs(self.staging)
        if bundle is not None:  # complete and synced: visible only now, before what names its objects
            _make_dir(self.bundles_root)
            os.rename(bundle[0], f"{self.bundles_root}/{bundle[1]}.bundle")
        moved = self._publish_nested()
        made: dict[str, bool] = {}  # objects/xx -> whether this publish made it (so it was empty)
        inside = self.staging + "/"
        for rel, staged in self._staged.items():
            prefix = rel[:2]
            if prefix in moved and staged.startswith(inside):
                continue  # published with its staging/xx directory
            final = f"{self.objects_root}/{rel}"
            new_dir = made.get(prefix)
            if new_dir is None:
                new_dir = made[prefix] = (prefix in moved or prefix in self._made_dirs
                                          or _make_dir(f"{self.objects_root}/{prefix}"))
            # An object present is kept (writes are idempotent); in a directory made (or
            # renamed from staging) just now there is none but ours and what another writer
            # may have renamed in meanwhile, which is complete and the same bytes and metadata.
            if new_dir or not os.path.exists(final):
                os.rename(staged, final)
            elif not staged.startswith(self.staging + "/"):  # adopted where it was: not left over
                os.unlink(staged)
        syncfs(self.objects_root)
        self._absent = self._absent.difference(rel[:2] for rel in self._staged)
        self._staged.clear()

    def _publish_nested(self) -> set[str]:
        """Rename each ``staging/xx`` holding staged objects to ``objects/xx`` where that is
        still absent, or an empty directory (a worker's, ``make_object_dirs``; the rename
        replaces it atomically); return the prefixes so published.  Everything in such a
        directory is complete: an object whose writing failed was removed (``_unreserve``).
        One another writer has made and filled meanwhile stays: its objects are renamed one
        by one, as flat ones are."""
        prefixes = {rel[:2] for rel, staged in self._staged.items()
                    if rel[:2] in self._absent and staged == f"{self.staging}/{rel}"}
        moved = set()
        for prefix in sorted(prefixes):
            try:
                os.rename(f"{self.staging}/{prefix}", f"{self.objects_root}/{prefix}")
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue
            moved.add(prefix)
        self._nested_made -= moved
        return moved


def _bundled_rels(index: BundleIndex) -> set[str]:
    """The objects of the bundles (``objects/``-relative paths, as ``_reserve`` looks them
    up); a bundle whose table is bad holds none."""
    out = set()
    for kind, raw, meta_key in index.records():
        h = raw.hex()
        out.add(f"{h[:2]}/{h[2:]}.tree" if kind == TREE else f"{h[:2]}/{h[2:]}.{meta_key.hex()}.file")
    index.close()
    return out


def _make_staging(tmp_root: str) -> str:
    """A new, private staging directory ``staging-PID-RANDOM`` in ``tmp_root`` (as
    ``tempfile.mkdtemp`` makes one; its import, with ``random``'s, costs start-up time)."""
    while True:
        path = f"{tmp_root}/{STAGING_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # 48 random bits: another try is enough
            continue
        return path


def _absent_prefixes(objects_root: str) -> frozenset[str]:
    """The ``xx`` whose ``objects/xx`` directory is absent (one listing, not 256 stats)."""
    try:
        present = set(os.listdir(objects_root))
    except FileNotFoundError:
        present = set()
    return frozenset(prefix for prefix in _PREFIXES if prefix not in present)


_PREFIXES = tuple(f"{i:02x}" for i in range(256))


def _umask() -> int | None:
    """This process's umask, read from ``/proc/self/status`` (``os.umask`` would have to set
    it to read it, and another thread could create a file meanwhile); None if unknown."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _creates_as_asked(directory: str) -> bool:
    """Whether a file created in ``directory`` gets the mode asked for (less the umask) and
    the creator's group: not so in a set-group-ID directory or one with a default ACL (a
    ``grpid`` mount, NFS, user namespaces: the first file created is checked, ``_created``)."""
    if os.stat(directory).st_mode & stat.S_ISGID:
        return False
    try:
        os.getxattr(directory, "system.posix_acl_default")
    except OSError as err:
        return err.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return False


def make_object_dirs(objects_root: str) -> list[str]:
    """Make every missing ``objects/xx`` directory; return the prefixes made.  On a disk
    filesystem a directory costs as much as a few object files: a worker makes them while
    a big transaction stages its objects, rather than ``publish`` at the end."""
    present = set(os.listdir(objects_root))
    return [prefix for prefix in (f"{i:02x}" for i in range(256))
            if prefix not in present and _make_dir(f"{objects_root}/{prefix}")]


def _make_dir(path: str) -> bool:
    """Make directory ``path`` (its parent exists); whether it was made, not already there."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False
    return True


def store_reader(tx: Transaction, reader: BinaryIO, size: int, meta: Meta, where: str | bytes
                 ) -> tuple[RawId, int]:
    """Store ``size`` bytes read from ``reader`` (a stream without a file descriptor).

    Small files are read whole; larger ones are written as they are read, a
    chunk at a time, so memory stays bounded (and chunks of zeros take no disk).
    A reader that ends early is a SourceError about ``where``.
    """
    if size <= IN_MEMORY_MAX:
        data = reader.read(size)
        if len(data) != size:
            raise SourceError(f"truncated: expected {size} bytes, got {len(data)}", path=where)
        return tx.add_file_bytes(data, meta), size
    return tx.add_file_pieces(reader_pieces(reader, size, where), meta)


def reader_pieces(reader: BinaryIO, size: int, where: str | bytes) -> Iterator[bytes]:
    """``size`` bytes of ``reader`` in chunks; one that ends early is a SourceError."""
    left = size
    while left:
        chunk = reader.read(min(left, COPY_CHUNK))
        if not chunk:
            raise SourceError(f"truncated: expected {size} bytes, got {size - left}", path=where)
        left -= len(chunk)
        yield chunk


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int, expected: int) -> bytes:
    """Read a regular file to EOF; one read when it has the size stat said."""
    first = os.read(fd, expected + 1)
    if len(first) <= expected:  # a short read of a regular file is EOF
        return first
    chunks = [first]
    while chunk := os.read(fd, COPY_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)
