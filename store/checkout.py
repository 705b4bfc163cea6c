"""Checking a commit out into a directory: hardlinks into the store, or copies.

The tree is built in a temporary sibling of the destination and renamed into
place at the end, so a crash never leaves a half checkout under the final name.
Hardlinks share the object's inode, so each file gets exactly the object's
mode, owner and xattrs (a file object kept in a bundle has no inode of its own: it is
written as a new file with its metadata, and identical files link to that one);
identical files (same content and metadata) share an inode, which keeps every hardlink
group of the source.  ``copy=True`` makes
independent files, still one inode per distinct object within the checkout.

The tree is walked with ``store.walk.steps`` and written relative to one open
directory at a time (``openat``, ``mkdirat``, ``linkat``), so neither its depth
nor the length of its paths is limited; a directory gets its metadata when it
is left, after its children were written into it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from dataclasses import dataclass

from .atomic import about
from .errors import CrossDevice, ObjectMissing, SourceError, UsageError
from .ids import RawId, to_hex
from .inode_meta import apply_meta, apply_symlink_meta_at
from .model import Entry, Kind, Meta
from .names import show
from .objects import ObjectStore
from .remove import remove_tree
from .sparse import SPARSE_MIN, copy_sparse, has_holes
from .walk import steps

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
COPY_CHUNK = 1 << 30  # bytes per sendfile call


@dataclass
class CheckoutStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0


class _Checkout:
    """Writes the entries of a walk into the directory ``fd`` (the one being filled)."""

    def __init__(self, objects: ObjectStore, copy: bool, work: str) -> None:
        self.objects = objects
        self.copy = copy
        self.work = os.fsencode(work)  # the temporary directory the tree is built in
        self.fd = os.open(work, _OPEN_DIR)
        self.first_copy: dict[str, bytes] = {}  # object file -> its first copy (full path)
        self.stats = CheckoutStats()

    def close(self) -> None:
        os.close(self.fd)

    def enter(self, name: bytes) -> None:
        os.mkdir(name, 0o700, dir_fd=self.fd)
        child = os.open(name, _OPEN_DIR, dir_fd=self.fd)
        os.close(self.fd)
        self.fd = child

    def leave(self, meta: Meta) -> None:
        """Give the directory being filled its metadata and go back to its parent."""
        apply_meta(self.fd, meta)
        self.stats.dirs += 1
        parent = os.open(b"..", _OPEN_DIR, dir_fd=self.fd)
        os.close(self.fd)
        self.fd = parent

    def symlink(self, entry: Entry) -> None:
        os.symlink(entry.target, entry.name, dir_fd=self.fd)
        apply_symlink_meta_at(self.fd, entry.name, entry.meta)
        self.stats.symlinks += 1

    def file(self, path: bytes, entry: Entry) -> None:
        source = self.objects.file_path(entry.digest, entry.meta)
        try:
            if not self.copy:
                os.link(source, entry.name, dst_dir_fd=self.fd)
            elif not self._link_first_copy(source, entry.name):
                self._copy(source, entry)
                self.first_copy[source] = self.work + b"/" + path
        except FileNotFoundError:
            if not os.path.exists(source):
                if self._from_bundle(path, entry, source):
                    self.stats.files += 1
                    return
                raise ObjectMissing(f"object {to_hex(entry.digest)} is missing", path=b"/" + path,
                                    object_id=to_hex(entry.digest), file=source) from None
            raise
        except OSError as err:
            if err.errno == errno.EXDEV:
                raise CrossDevice("the checkout is on another filesystem than the repository: "
                                  "hardlinks cannot cross filesystems", path=b"/" + path,
                                  file=source) from err
            raise
        self.stats.files += 1

    def _from_bundle(self, path: bytes, entry: Entry, source: str) -> bool:
        """Write a bundled file object as a new file with its metadata (there is no object
        inode to link), once: identical files link to the first; False if none is bundled."""
        if self._link_first_copy(source, entry.name):
            return True
        data = self.objects.bundled_file(entry.digest, entry.meta)
        if data is None:
            return False
        out = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                      dir_fd=self.fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
            apply_meta(out, entry.meta)
        finally:
            os.close(out)
        self.first_copy[source] = self.work + b"/" + path
        return True

    def _link_first_copy(self, source: str, name: bytes) -> bool:
        """Link ``name`` to the copy made of ``source`` before; False when there is none or its
        path is too long to name (then the object is copied again)."""
        first = self.first_copy.get(source)
        if first is None:
            return False
        try:
            os.link(first, name, dst_dir_fd=self.fd)
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:
                return False
            raise
        return True

    def _copy(self, source: str, entry: Entry) -> None:
        """A new file ``entry.name`` with the object's content (copied in the kernel) and metadata."""
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            out = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                          dir_fd=self.fd)
            try:
                if entry.size >= SPARSE_MIN and has_holes(src, 0, entry.size):
                    copy_sparse(src, out)  # sendfile would write every hole out as zeros
                else:
                    while os.sendfile(out, src, None, COPY_CHUNK):
                        pass
                apply_meta(out, entry.meta)
            finally:
                os.close(out)
        finally:
            os.close(src)

    def write(self, tree: RawId, root_meta: Meta) -> None:
        """Write every entry of ``tree`` and then give the root ``root_meta``."""
        for step in steps(self.objects, tree):
            try:
                if step.leave:
                    self.leave(step.entry.meta)
                elif step.entry.kind is Kind.DIR:
                    self.enter(step.entry.name)
                elif step.entry.kind is Kind.FILE:
                    self.file(step.path, step.entry)
                else:
                    self.symlink(step.entry)
            except OSError as err:
                raise _named(err, b"/" + step.path) from None
        apply_meta(self.fd, root_meta)
        self.stats.dirs += 1


def _named(err: OSError, path: bytes) -> OSError:
    """``err`` about ``path``, a path of the tree: our own names are relative or temporary."""
    return OSError(err.errno, err.strerror, os.fsdecode(path))


def _in_dest(name: str | bytes | None, work: str, dest: str) -> str | None:
    """A path below the temporary ``work`` directory as the user will know it: below ``dest``."""
    if name is None:
        return None
    text = os.fsdecode(name)
    if text == work or text.startswith(work + "/"):
        return dest + text[len(work):]
    if text.startswith("/"):  # a path of the tree (see _named)
        return dest + text
    return text


def _told_about_dest(err: OSError, work: str, dest: str) -> OSError:
    """``err`` with every name below ``work`` (or of the tree) shown below ``dest`` instead."""
    return OSError(err.errno, err.strerror, _in_dest(err.filename, work, dest), None,
                   _in_dest(err.filename2, work, dest))


def checkout(objects: ObjectStore, tree: RawId, root_meta: Meta, dest: str, *,
             copy: bool = False) -> CheckoutStats:
    """Materialise ``tree`` at ``dest``, which must not exist yet.  Errors name ``dest`` (or a
    path below it), never the temporary directory the tree is built in."""
    if not dest:
        raise UsageError("the destination is an empty path; give a directory name to create")
    if os.path.lexists(dest):
        raise SourceError("already exists; choose a new destination", path=dest)
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise SourceError("no such directory", path=parent)
    try:
        work = tempfile.mkdtemp(prefix=".sealtree-checkout-", dir=parent)
    except OSError as err:
        raise about(err, dest, f"cannot create it in {show(parent)}") from None
    try:
        job = _Checkout(objects, copy, work)
        try:
            job.write(tree, root_meta)
        finally:
            job.close()
        os.rename(work, dest)
    except OSError as err:
        _remove_quietly(work)
        raise _told_about_dest(err, work, dest) from None
    except BaseException:
        _remove_quietly(work)
        raise
    return job.stats


def _remove_quietly(work: str) -> None:
    """Remove a half-built checkout; a failure to do so must not hide the error that stopped it."""
    with contextlib.suppress(OSError):
        remove_tree(work)
