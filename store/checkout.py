"""Checking a commit out into a directory: hardlinks into the store, or copies.

The tree is built in a temporary sibling of the destination and renamed into
place at the end, so a crash never leaves a half checkout under the final name.
Hardlinks share the object's inode, so each file gets exactly the object's
mode, owner and xattrs; identical files (same content and metadata) share an
inode, which keeps every hardlink group of the source.  ``copy=True`` makes
independent files, still one inode per distinct object within the checkout.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass

from . import xattrs
from .atomic import about
from .errors import ObjectMissing, RepositoryError, SourceError, UsageError
from .ids import RawId, to_hex
from .model import Entry, Kind, Meta
from .objects import ObjectStore


@dataclass
class CheckoutStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0


def apply_meta_path(path: bytes, meta: Meta, *, symlink: bool = False) -> None:
    """Set a path's owner, mode (not for symlinks) and xattrs, in the order
    ``store.transaction.apply_meta`` explains."""
    os.chown(path, meta.uid, meta.gid, follow_symlinks=False)
    if not symlink:
        os.chmod(path, meta.mode)
    if meta.xattrs:
        xattrs.write(path, meta.xattrs)


class _Checkout:
    def __init__(self, objects: ObjectStore, copy: bool, work: bytes) -> None:
        self.objects = objects
        self.copy = copy
        self.work = work  # the temporary directory the tree is built in
        self.first_copy: dict[str, bytes] = {}
        self.stats = CheckoutStats()

    def shown(self, path: bytes) -> str:
        """A path being written, as a path of the tree (``/etc/motd``), not of our temp directory."""
        return path[len(self.work):].decode(errors="backslashreplace")

    def file(self, path: bytes, entry: Entry) -> None:
        source = self.objects.file_path(entry.digest, entry.meta)
        try:
            if not self.copy:
                os.link(source, path)
            elif (first := self.first_copy.get(source)) is not None:
                os.link(first, path)
            else:
                shutil.copyfile(source, path)
                apply_meta_path(path, entry.meta)
                self.first_copy[source] = path
        except FileNotFoundError:
            if not os.path.exists(source):
                raise ObjectMissing(f"{self.shown(path)}: object "
                                    f"{to_hex(entry.digest)} is missing", object_id=to_hex(entry.digest),
                                    path=source) from None
            raise
        except OSError as err:
            if err.errno == errno.EXDEV:
                raise RepositoryError("the checkout is on another filesystem than the repository: "
                                      "hardlinks cannot cross filesystems (use --copy)",
                                      path=self.shown(path)) from err
            raise
        self.stats.files += 1

    def directory(self, path: bytes, tree: RawId, meta: Meta) -> None:
        for entry in self.objects.read_tree(tree):
            child = path + b"/" + entry.name
            if entry.kind is Kind.FILE:
                self.file(child, entry)
            elif entry.kind is Kind.DIR:
                os.mkdir(child, 0o700)
                self.directory(child, entry.tree, entry.meta)
            else:
                os.symlink(entry.target, child)
                apply_meta_path(child, entry.meta, symlink=True)
                self.stats.symlinks += 1
        apply_meta_path(path, meta)
        self.stats.dirs += 1


def _in_dest(name: str | bytes | None, work: str, dest: str) -> str | None:
    """A path below the temporary ``work`` directory as the user will know it: below ``dest``."""
    if name is None:
        return None
    text = os.fsdecode(name)
    if text == work or text.startswith(work + "/"):
        return dest + text[len(work):]
    return text


def _told_about_dest(err: OSError, work: str, dest: str) -> OSError:
    """``err`` with every name below ``work`` shown below ``dest`` instead."""
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
        raise about(err, dest, f"cannot create it in {parent}") from None
    try:
        job = _Checkout(objects, copy, os.fsencode(work))
        job.directory(job.work, tree, root_meta)
        os.rename(work, dest)
    except OSError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise _told_about_dest(err, work, dest) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return job.stats
