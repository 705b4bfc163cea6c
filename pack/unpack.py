"""Safe unpacking: creating a tree below a root directory without ever leaving it.

Every directory is created with ``mkdirat`` and then opened relative to its
parent's descriptor with ``O_DIRECTORY | O_NOFOLLOW``; files are created with
``O_CREAT | O_EXCL | O_NOFOLLOW``; symlinks are created but never followed.
So no path, however crafted, and no symlink, wherever it points, makes a
write land outside the root.  Names are re-checked here too (no ``/``, ``.``,
``..`` or NUL), in case a caller builds rows by hand.

Metadata is exact: mode, owner and xattrs on every file, directory and
symlink (no mode on symlinks: Linux has none).  A directory's metadata is
applied when it is finished, after its children, so read-only directories
can still be filled.  Large files are not written by ``unpack_inline``:
deployments put hardlinks to their objects in place (``TreeWriter.link``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import TracebackType

from store import xattrs
from store.errors import PackError, UsageError
from store.inode_meta import apply_meta
from store.model import Kind, Meta, check_name
from store.record import Mutable

from .manifest import ManifestEntry
from .reader import PackReader

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeWriter:
    """Creates paths below the empty directory ``root``, in manifest order.

    Calls must come in manifest order (a directory before anything below it,
    depth first); use as a context manager, which applies the pending
    directories' metadata on a clean exit (``root_meta`` to the root itself
    when given) and only closes descriptors after an error.
    """

    def __init__(self, root: str | os.PathLike[str], root_meta: Meta | None = None) -> None:
        self.root = os.fspath(root)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if os.listdir(fd):
            os.close(fd)
            raise UsageError("not empty; unpacking needs an empty directory",
                             path=self.root)
        self._stack: list[tuple[bytes, int, Meta | None]] = [(b"", fd, root_meta)]

    def __enter__(self) -> TreeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    @contextlib.contextmanager
    def _about(self, path: bytes) -> Iterator[None]:
        """An OSError in the block names the file at ``path`` below the root, not what the
        call was given (a descriptor, a name relative to one, a ``/proc/self/fd/...`` link)."""
        try:
            yield
        except OSError as err:
            where = os.path.join(os.fsencode(self.root), path) if path else self.root
            raise OSError(err.errno, err.strerror, os.fsdecode(where)) from err

    def _finish(self) -> None:
        path, fd, meta = self._stack.pop()
        try:
            if meta is not None:
                with self._about(path):
                    apply_meta(fd, meta)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Finish every open directory, the root last."""
        while self._stack:
            self._finish()

    def abandon(self) -> None:
        """Close every descriptor without touching metadata (after an error)."""
        while self._stack:
            os.close(self._stack.pop()[1])

    def _place(self, path: bytes) -> tuple[int, bytes]:
        """The descriptor of ``path``'s parent (finishing directories left behind) and its name."""
        parent, _sep, name = path.rpartition(b"/")
        problem = "absolute path" if path.startswith(b"/") else check_name(name)
        if problem:
            raise PackError(f"cannot be unpacked: bad name: {problem}", path=path)
        while self._stack[-1][0] != parent:
            if len(self._stack) == 1:
                raise PackError("cannot be unpacked: its parent directory was not created just "
                                "before it (paths must come in manifest order)", path=path)
            self._finish()
        return self._stack[-1][1], name

    def mkdir(self, path: bytes, meta: Meta) -> None:
        parent, name = self._place(path)
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        self._stack.append((path, fd, meta))

    def write_file(self, path: bytes, data: bytes, meta: Meta) -> None:
        parent, name = self._place(path)
        fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            with self._about(path):
                apply_meta(fd, meta)
        finally:
            os.close(fd)

    def symlink(self, path: bytes, target: bytes, meta: Meta) -> None:
        parent, name = self._place(path)
        os.symlink(target, name, dir_fd=parent)
        with self._about(path):
            os.chown(name, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
            if meta.xattrs:
                # The xattr calls take no dirfd: name the link through our open
                # directory (a magic link to it), never following the final name.
                xattrs.write(f"/proc/self/fd/{parent}/".encode() + name, meta.xattrs)

    def link(self, path: bytes, source: str | os.PathLike[str]) -> None:
        """Hardlink ``source`` (an object file) at ``path``: it keeps the object's inode metadata."""
        parent, name = self._place(path)
        os.link(source, name, dst_dir_fd=parent, follow_symlinks=False)


class UnpackReport(Mutable):
    __slots__ = ("dirs", "files", "links", "symlinks", "bytes", "large")
    _fields = __slots__
    dirs: int
    files: int
    links: int  # inline files made hardlinks of an identical earlier one (share_identical)
    symlinks: int
    bytes: int
    large: list[ManifestEntry]

    def __init__(self, dirs: int = 0, files: int = 0, links: int = 0, symlinks: int = 0, bytes: int = 0,
                 large: list[ManifestEntry] | None = None) -> None:
        self._set_fields(dirs, files, links, symlinks, bytes, [] if large is None else large)


def unpack_inline(reader: PackReader, target: str | os.PathLike[str], *,
                  writer: type[TreeWriter] = TreeWriter, share_identical: bool = False) -> UnpackReport:
    """Write the pack's directories, symlinks and inline files into the empty directory
    ``target`` with exact metadata (``target`` itself gets the commit's root metadata).

    Large files are not written; they are returned in ``report.large`` in
    manifest order, for the caller to hardlink or fetch.  ``share_identical``:
    inline files with the same content and metadata become one inode (hardlinks
    of the first), as the store's objects are.  ``writer``: a ``TreeWriter``
    subclass.  On any exception ``target`` holds a partial tree the caller must
    discard: the pack's last checks (digest of the whole file) complete only at
    the end.
    """
    report = UnpackReport()
    first: dict[tuple[bytes, Meta], bytes] = {}
    root = os.fsencode(target) + b"/"
    with writer(target, reader.commit.root_meta) as tree:
        for row, data in reader.entries():
            entry = row.entry
            if entry.kind is Kind.DIR:
                tree.mkdir(row.path, entry.meta)
                report.dirs += 1
            elif entry.kind is Kind.SYMLINK:
                tree.symlink(row.path, entry.target, entry.meta)
                report.symlinks += 1
            elif data is None:
                report.large.append(row)
            else:
                if share_identical:
                    same = first.setdefault((entry.digest, entry.meta), row.path)
                    if same != row.path:
                        tree.link(row.path, os.fsdecode(root + same))
                        report.links += 1
                        continue
                tree.write_file(row.path, data, entry.meta)
                report.files += 1
                report.bytes += len(data)
    return report
