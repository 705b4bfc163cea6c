"""Unpacking a verified pack into the (fresh, empty) tmpfs of a deployment.

``pack.unpack.unpack_inline`` (which never leaves its root and applies exact
metadata) does the work, with two differences that the merged view needs:

- inline files with the same content and metadata become one inode
  (hardlinks), like the store's objects, so every hardlink group of the
  source tree survives in the tmpfs as it does in the farm;
- ``_TmpfsWriter`` leaves out the metadata calls that would change nothing on
  a fresh tmpfs inode (most of a deploy's system calls otherwise).

In the metacopy layout (``overlay.metacopy``) each large file is written too,
as its stub: a sparse file of the object's size with the file's metadata and
the overlay xattrs; large files with equal content and metadata share one
stub inode, as they share one object in the hardlinks layout.

``tmpfs_size`` works out how large the tmpfs must be from the manifest, so
the mount is bounded (a hostile manifest cannot fill memory) yet never short
(the bound is in docs/FORMAT.md, section 9, "The mounted view").
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from pack.manifest import Manifest
from pack.reader import PackReader
from pack.unpack import TreeWriter, UnpackReport, unpack_inline
from store import xattrs
from store.errors import DeployError
from store.ids import RawId
from store.model import Kind, Meta

from .metacopy import METACOPY_XATTR, REDIRECT_XATTR, Stub, StubPlan

PAGE = 4096
# tmpfs (Linux 6.6+) gives each mount nr_inodes * BOGO_INODE bytes of "inode space": every
# inode and every extra hardlink of one takes BOGO_INODE of it, every xattr its size plus
# the kernel's record of it (struct simple_xattr and the name's NUL: under XATTR_OVERHEAD).
BOGO_INODE = 1024
XATTR_OVERHEAD = 64
SHORT_SYMLINK = 128  # a symlink target this long or longer takes a page; shorter ones do not
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_DIR_MODE = 0o700  # never setgid while being filled
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class TmpfsSize:
    bytes: int
    inodes: int


def tmpfs_size(manifest: Manifest, root_meta: Meta | None = None, *, stubs: bool = False,
               stub_xattr_bytes: int = 0) -> TmpfsSize:
    """What the tmpfs holding the manifest's tree needs, with a margin.

    Bytes: a page per started page of every distinct inline inode (identical
    inline files share one) and of every long symlink.  Inodes: one for the
    root and one per directory, symlink and inline file, hardlinks included
    (tmpfs charges an inode for every link), plus every xattr's inode space.
    With ``stubs`` (metacopy layout) every large file counts as a link too (a
    sparse stub: no pages) with its xattrs, plus ``stub_xattr_bytes`` (the
    overlay xattrs' names and values) and XATTR_OVERHEAD for each of them.
    Each is then 1/8 more, and 4 MiB / 1024 inodes more, so a correct tree
    never meets ENOSPC, while a hostile manifest gets no more than that.
    """
    pages = 0
    links = 1  # the root directory
    xattr_space = 0
    seen: set[tuple[bytes, Meta]] = set()
    for row in manifest.entries:
        entry = row.entry
        if entry.kind is Kind.FILE and not row.inline:
            if not stubs:
                continue  # a large file: in the farm, not in the tmpfs
            links += 1  # its stub: an inode (or a link) but no pages
            if entry.meta.xattrs:
                xattr_space += sum(len(n) + len(v) + XATTR_OVERHEAD for n, v in entry.meta.xattrs)
            xattr_space += 2 * XATTR_OVERHEAD
            continue
        links += 1
        if entry.meta.xattrs:  # most have none: no generator for them (thousands of entries)
            xattr_space += sum(len(n) + len(v) + XATTR_OVERHEAD for n, v in entry.meta.xattrs)
        if entry.kind is Kind.FILE:
            key = (entry.digest, entry.meta)
            if key not in seen:  # the first link of an inode: its pages
                seen.add(key)
                pages += -(-entry.size // PAGE)
        elif entry.kind is Kind.SYMLINK and len(entry.target) >= SHORT_SYMLINK:
            pages += 1
    root_xattrs = root_meta.xattrs if root_meta is not None else ()
    xattr_space += sum(len(n) + len(v) + XATTR_OVERHEAD for n, v in root_xattrs)
    xattr_space += stub_xattr_bytes
    data = pages * PAGE
    inodes = links + -(-xattr_space // BOGO_INODE)
    return TmpfsSize(data + data // 8 + (4 << 20), inodes + inodes // 8 + 1024)


class _TmpfsWriter(TreeWriter):
    """``TreeWriter`` without the system calls that would change nothing.

    A new inode is owned by this process's (fs)uid and gid: its parent is never
    setgid while being filled (directories are made 0700 and get their mode
    when finished; the tmpfs root is mounted 0755), so ``chown`` is only called
    for another owner.  A file is created with its final permission bits when
    they hold no setuid/setgid/sticky bit and the umask does not clear any of
    them, so ``chmod`` is only called otherwise (and always after ``chown``,
    which clears setuid/setgid, and before xattrs: ``chown`` drops
    ``security.capability``).  Directories and symlinks likewise.
    """

    def __init__(self, root: str, root_meta: Meta) -> None:
        super().__init__(root, root_meta)
        self._owner = (os.geteuid(), os.getegid())
        umask = os.umask(0o022)
        os.umask(umask)
        self._umask = umask

    def _apply(self, fd: int, meta: Meta, mode_now: int | None) -> None:
        if (meta.uid, meta.gid) != self._owner:
            os.fchown(fd, meta.uid, meta.gid)
            mode_now = None  # chown may have cleared setuid/setgid
        if meta.mode != mode_now:
            os.fchmod(fd, meta.mode)
        if meta.xattrs:
            xattrs.write(fd, meta.xattrs)

    def mkdir(self, path: bytes, meta: Meta) -> None:
        parent, name = self._place(path)
        os.mkdir(name, _NEW_DIR_MODE, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        self._stack.append((path, fd, meta))

    def _finish(self) -> None:
        path, fd, meta = self._stack.pop()
        try:
            if meta is not None:  # made _NEW_DIR_MODE; the root as mounted
                self._apply(fd, meta, _NEW_DIR_MODE & ~self._umask if path else None)
        finally:
            os.close(fd)

    def write_file(self, path: bytes, data: bytes, meta: Meta) -> None:
        parent, name = self._place(path)
        plain = not meta.mode & 0o7000 and not meta.mode & self._umask
        mode = meta.mode if plain else 0o600
        fd = os.open(name, _NEW_FILE, mode, dir_fd=parent)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self._apply(fd, meta, mode & ~self._umask)
        finally:
            os.close(fd)

    def symlink(self, path: bytes, target: bytes, meta: Meta) -> None:
        parent, name = self._place(path)
        os.symlink(target, name, dir_fd=parent)
        if meta.xattrs:
            # The xattr calls take no dirfd: name the link through our open
            # directory (a magic link to it), never following the final name.
            xattrs.write(f"/proc/self/fd/{parent}/".encode() + name, meta.xattrs)
        if (meta.uid, meta.gid) != self._owner:
            os.chown(name, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)


    def write_stub(self, path: bytes, stub: Stub, meta: Meta) -> None:
        """A metacopy stub: a sparse file of the object's size, with ``meta`` and the stub's
        overlay xattrs (after the tree's own: a tree never carries overlay xattrs)."""
        parent, name = self._place(path)
        plain = not meta.mode & 0o7000 and not meta.mode & self._umask
        mode = meta.mode if plain else 0o600
        fd = os.open(name, _NEW_FILE, mode, dir_fd=parent)
        try:
            os.ftruncate(fd, stub.size)
            self._apply(fd, meta, mode & ~self._umask)
            # os.setxattr: two fixed names on every stub, without the xattr package's wrapping
            os.setxattr(fd, REDIRECT_XATTR, stub.redirect)
            os.setxattr(fd, METACOPY_XATTR, stub.metacopy)
        finally:
            os.close(fd)


def unpack_into_tmpfs(reader: PackReader, root: str, stubs: StubPlan | None = None) -> UnpackReport:
    """Write every directory, symlink and inline file of ``reader`` under the empty ``root``.

    ``root`` gets the commit's root metadata; identical inline files share an
    inode.  Large files are left out (the farm has them), or with ``stubs``
    written as their metacopy stubs.  Raises PackError if the pack turns out
    bad part way (``root`` then holds a partial tree the caller discards with
    its tmpfs).
    """
    try:
        if stubs is None:
            return unpack_inline(reader, root, writer=_TmpfsWriter, share_identical=True)
        return _unpack_with_stubs(reader, root, stubs)
    except OSError as err:
        if err.errno == errno.ENOSPC:  # the manifest-sized tmpfs was too small (a bug of ours)
            raise DeployError(f"the tmpfs sized from the manifest is full: {err.strerror}",
                              path=err.filename or root) from err
        raise


def _unpack_with_stubs(reader: PackReader, root: str, plan: StubPlan) -> UnpackReport:
    """``unpack_inline`` with identical files shared, and each large file as its stub
    (identical content and metadata: one stub inode).  Counts stubs as files."""
    report = UnpackReport()
    first: dict[tuple[RawId, Meta, bool], bytes] = {}
    base = os.fsencode(root) + b"/"
    tree = _TmpfsWriter(root, reader.commit.root_meta)
    with tree:
        for row, data in reader.entries():
            entry = row.entry
            if entry.kind is Kind.DIR:
                tree.mkdir(row.path, entry.meta)
                report.dirs += 1
                continue
            if entry.kind is Kind.SYMLINK:
                tree.symlink(row.path, entry.target, entry.meta)
                report.symlinks += 1
                continue
            same = first.setdefault((entry.digest, entry.meta, data is None), row.path)
            if same != row.path:
                tree.link(row.path, os.fsdecode(base + same))
                report.links += 1
            elif data is None:
                tree.write_stub(row.path, plan.stubs[entry.digest], entry.meta)
                report.large.append(row)
            else:
                tree.write_file(row.path, data, entry.meta)
                report.files += 1
                report.bytes += len(data)
    return report
